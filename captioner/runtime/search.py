"""Generation, written once: greedy, sampling and batched beam search (n-best) over a step.

A decoder contributes only its per-step core, a :class:`DecoderStep`: ``start(features)``
gives the per-image memory and the initial recurrent state, ``step(words, rows, memory,
state)`` the next-word log-probabilities. The ONNX Runtime graphs supply one step object
(:mod:`captioner.runtime.graphs`), the PyTorch decoders another (the reference path); the
search below runs on numpy and never knows which.

Every hypothesis records, as it is generated, each word's log-probability, the log-probability
``<end>`` had at every step, and (for attention decoders) where the model looked for each
word. Confidence, the unsure-word cut and the attention maps read these records: no second,
teacher-forced pass over the decoder.

Rules shared by every algorithm: ``max_length`` bounds the words, and a caption that reaches
it is closed with a forced ``<end>``; no word three times in a row; with
``no_repeat_ngram_size=n`` no n-gram twice. Refused words get probability zero for the choice
only: scores stay the model's own log-probabilities of the words chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# The default n of no_repeat_ngram_size: no 3-gram twice in a caption. Measured on 1,000
# held-out scenes with the shipped weights (docs/trust.md): it does not lower scene accuracy.
DEFAULT_NO_REPEAT_NGRAM = 3
MAX_RUN = 2  # a word may follow itself once, never twice

State = tuple[np.ndarray, ...]  # recurrent state, each array (N, ...) with one row per hypothesis


class DecoderStep(Protocol):
    """The per-step core of a decoder (all arrays numpy, float32 unless said)."""

    vocab_size: int

    def start(self, features: np.ndarray) -> tuple[Any, State]:
        """features (B, F) or maps (B, N, C) -> memory (B, ...) per image (opaque to the search:
        a torch tensor on the reference path's device), initial state (B, ...)."""
        ...

    def step(
        self, words: np.ndarray, rows: np.ndarray, memory: Any, state: State
    ) -> tuple[np.ndarray, State, np.ndarray | None]:
        """previous words (N,) int64, each row's image rows (N,) int64 into memory -> log-probs
        (N, V), new state, attention weights (N, L) or None."""
        ...


@dataclass
class Hypothesis:
    """One finished caption: word ids (no specials), its score (the sum of ``logprobs``)."""

    tokens: list[int]
    score: float
    logprobs: np.ndarray  # (T + 1,) each word's log-prob, then <end>'s
    end_logprobs: np.ndarray  # (T + 1,) <end>'s log-prob after each prefix (the cut reads it)
    attention: np.ndarray | None = None  # (T + 1, L) where the model looked for each word and <end>


def ngram_size(no_repeat_ngram_size: int | None) -> int:
    n = DEFAULT_NO_REPEAT_NGRAM if no_repeat_ngram_size is None else int(no_repeat_ngram_size)
    if n < 0:
        raise ValueError("no_repeat_ngram_size must be >= 0 (0 switches it off)")
    return n


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + L) / 6) ** alpha; 1 when alpha == 0."""
    return 1.0 if alpha == 0 else ((5.0 + length) / 6.0) ** alpha


def banned_words(history: np.ndarray, vocab_size: int, no_repeat_ngram_size: int) -> np.ndarray:
    """Bool mask (N, V) of the next words refused after ``history`` (N, t) of word ids: the
    third of a run, and (n >= 1) every word completing an n-gram already in the row."""
    N, t = history.shape
    banned = np.zeros((N, vocab_size), dtype=bool)  # (N, V)
    if t >= MAX_RUN:
        last = history[:, -MAX_RUN:]  # (N, MAX_RUN)
        run = np.flatnonzero((last == last[:, -1:]).all(axis=1))  # rows ending in a run
        banned[run, history[run, -1]] = True
    n = int(no_repeat_ngram_size)
    if n >= 1 and t >= n:
        if n == 1:
            banned[np.arange(N)[:, None], history] = True
            return banned
        windows = sliding_window_view(history, n, axis=1)  # (N, t-n+1, n): every n-gram so far
        prefix = history[:, t - n + 1 :]  # (N, n-1): what the next word would extend
        match = (windows[:, :, :-1] == prefix[:, None, :]).all(axis=2)  # (N, t-n+1)
        r, w = np.nonzero(match)
        banned[r, windows[r, w, -1]] = True
    return banned


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sequential(
    step: DecoderStep,
    features: np.ndarray,
    start_id: int,
    end_id: int,
    max_length: int,
    no_repeat_ngram_size: int | None = None,
    temperature: float | None = None,
    rng: np.random.Generator | None = None,
) -> list[Hypothesis]:
    """Greedy (``temperature`` None) or sampling from softmax(logp / temperature) over the
    allowed words, one hypothesis per image. Finished rows leave the batch."""
    if max_length < 1:
        raise ValueError("max_length must be >= 1")
    if temperature is not None and not temperature > 0:
        raise ValueError("temperature must be > 0 (use greedy for temperature 0)")
    ngram, rng = ngram_size(no_repeat_ngram_size), rng or np.random.default_rng()
    B = features.shape[0]
    memory, state = step.start(features)
    rows = np.arange(B)  # the images still generating
    words = np.full(B, start_id, dtype=np.int64)  # (n,)
    hist = np.zeros((B, max_length), dtype=np.int64)  # chosen words
    lps = np.zeros((B, max_length + 1), dtype=np.float32)  # their log-probs
    end_lps = np.zeros((B, max_length + 1), dtype=np.float32)  # <end>'s at every step
    lengths = np.full(B, max_length)
    att: np.ndarray | None = None  # (B, max_length + 1, L)
    for t in range(max_length + 1):
        logp, state, alpha = step.step(words, rows, memory, state)  # (n, V), (n, L)
        if t == max_length:  # force <end>
            nxt = np.full(len(rows), end_id, dtype=np.int64)
        else:
            allowed = np.where(banned_words(hist[rows, :t], logp.shape[1], ngram), -np.inf, logp)  # (n, V)
            if temperature is None:
                nxt = allowed.argmax(axis=1)
            else:
                cum = np.cumsum(_softmax(allowed / temperature), axis=1)  # (n, V)
                u = rng.random(len(rows))[:, None] * cum[:, -1:]
                nxt = np.minimum((cum < u).sum(axis=1), logp.shape[1] - 1)
        n = np.arange(len(rows))
        lps[rows, t], end_lps[rows, t] = logp[n, nxt], logp[:, end_id]
        if alpha is not None:
            att = np.zeros((B, max_length + 1, alpha.shape[1]), np.float32) if att is None else att
            att[rows, t] = alpha
        ended = nxt == end_id
        lengths[rows[ended]] = t
        keep = ~ended
        if t < max_length:
            hist[rows[keep], t] = nxt[keep]
        if not keep.any():
            break
        rows, words, state = rows[keep], nxt[keep], tuple(s[keep] for s in state)
    out = []
    for b in range(B):
        L = int(lengths[b])
        out.append(
            Hypothesis(
                hist[b, :L].tolist(),
                float(lps[b, : L + 1].sum(dtype=np.float64)),
                lps[b, : L + 1].copy(),
                end_lps[b, : L + 1].copy(),
                None if att is None else att[b, : L + 1].copy(),
            )
        )
    return out


@dataclass
class _Beams:
    """The live hypotheses of the images still searching: ``k`` rows per image."""

    images: np.ndarray  # (nb,) which images
    scores: np.ndarray  # (nb, k) summed log-probs; -inf: empty slot
    hist: np.ndarray  # (nb, k, t) words so far
    lps: np.ndarray  # (nb, k, t) their log-probs
    end_lps: np.ndarray  # (nb, k, t) <end>'s log-prob at each step
    att: np.ndarray | None  # (nb, k, t, L)


def beam_search(
    step: DecoderStep,
    features: np.ndarray,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int = 3,
    length_penalty_alpha: float = 0.0,
    no_repeat_ngram_size: int | None = None,
    num_captions: int = 1,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of images at once; the ``num_captions`` best finished
    hypotheses per image, best first (ranked by score / ((5 + L) / 6) ** alpha, L counting
    the words and ``<end>``). A candidate that emits ``<end>`` among the top ``beam_size`` is
    finished; an image's search stops when its ``num_captions``-th best finished hypothesis
    cannot be beaten by a live one, and its rows then leave the batch."""
    k, K = int(beam_size), int(num_captions)
    if k < 1 or not 1 <= K <= k:
        raise ValueError("beam_size must be >= 1 and num_captions between 1 and beam_size")
    if max_length < 1:
        raise ValueError("max_length must be >= 1")
    ngram, alpha_lp = ngram_size(no_repeat_ngram_size), float(length_penalty_alpha)
    B = features.shape[0]
    memory, state = step.start(features)  # (B, ...), each (B, ...)
    state = tuple(np.repeat(s, k, axis=0) for s in state)  # (B*k, ...)
    scores = np.full((B, k), -np.inf)
    scores[:, 0] = 0.0  # only the first beam is live at t=0
    empty = np.zeros((B, k, 0))
    beams = _Beams(
        np.arange(B), scores, empty.astype(np.int64), empty.astype(np.float32), empty.astype(np.float32), None
    )
    words = np.full(B * k, start_id, dtype=np.int64)
    finished: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(B)]
    bound_lp = length_penalty(max_length + 1, alpha_lp)
    for t in range(max_length + 1):
        nb = len(beams.images)
        rows = np.repeat(beams.images, k)  # (nb*k,) each row's image
        logp, state, alpha = _live_step(step, words, rows, memory, state, beams.scores.reshape(-1))
        V = logp.shape[1]  # logp (nb*k, V), alpha (nb*k, L)
        logp = logp.reshape(nb, k, V)
        masked = np.where(banned_words(beams.hist.reshape(nb * k, t), V, ngram).reshape(nb, k, V), -np.inf, logp)
        if t == max_length:  # only <end> is allowed now
            masked = np.where(np.arange(V) == end_id, masked, -np.inf)
        alphas = None if alpha is None else alpha.reshape(nb, k, -1)
        if alphas is not None and beams.att is None:
            beams.att = np.zeros((nb, k, t, alphas.shape[2]), np.float32)
        new_scores, new_words, new_src, done = _advance(
            beams, masked, logp, alphas, t, k, K, end_id, finished, alpha_lp, bound_lp
        )
        if alpha_lp >= 0:  # where score / bound_lp bounds what a hypothesis can still reach
            _drop_hopeless(new_scores, beams.images, finished, K, bound_lp)
        if done.all() or t == max_length:
            break
        keep = ~done
        sel = (np.arange(nb)[:, None] * k + new_src)[keep].reshape(-1)  # (n,) source rows, n = nb' * k
        src = (sel // k, sel % k)
        chosen = new_words[keep].reshape(-1)  # (n,)
        flat = logp.reshape(nb * k, V)
        beams = _Beams(
            beams.images[keep],
            new_scores[keep],
            _grow(beams.hist, chosen, src, k),
            _grow(beams.lps, flat[sel, chosen], src, k),
            _grow(beams.end_lps, flat[sel, end_id], src, k),
            None if alphas is None or beams.att is None else _grow(beams.att, alphas.reshape(nb * k, -1)[sel], src, k),
        )
        state = tuple(s[sel] for s in state)
        words = new_words[keep].reshape(-1)
    return [[h for _, h in sorted(f, key=lambda x: -x[0])[:K]] for f in finished]


def _live_step(
    step: DecoderStep, words: np.ndarray, rows: np.ndarray, memory: Any, state: State, scores: np.ndarray
) -> tuple[np.ndarray, State, np.ndarray | None]:
    """The step on the rows with a finite score (N,) only: empty beam slots (all but one at
    the first step, and hopeless rows, :func:`_drop_hopeless`) get log-probs -inf, so none of
    their words is ever chosen, and zero state and attention. Returns (N, V), state, (N, L)."""
    live = np.flatnonzero(np.isfinite(scores))  # (n,)
    if len(live) == len(scores):
        return step.step(words, rows, memory, state)
    logp, got, alpha = step.step(words[live], rows[live], memory, tuple(s[live] for s in state))  # (n, V)
    full = np.full((len(scores), logp.shape[1]), -np.inf, np.float32)  # (N, V)
    full[live] = logp
    new_state = []
    for s in got:
        full_s = np.zeros((len(scores), *s.shape[1:]), s.dtype)  # (N, ...)
        full_s[live] = s
        new_state.append(full_s)
    full_alpha = None
    if alpha is not None:
        full_alpha = np.zeros((len(scores), alpha.shape[1]), alpha.dtype)  # (N, L)
        full_alpha[live] = alpha
    return full, tuple(new_state), full_alpha


def _drop_hopeless(
    new_scores: np.ndarray,
    images: np.ndarray,
    finished: list[list[tuple[float, Hypothesis]]],
    K: int,
    bound_lp: float,
) -> None:
    """Empty (score -inf) the live beams (nb, k) that can no longer reach their image's
    ``K`` best: scores only fall, so a beam at or below the ``K``-th best finished score
    (after the largest length penalty) never gets there, nor do its descendants. Whatever
    would take its place scores lower still, so the ``K`` best stay the same; its rows then
    skip the decoder step (:func:`_live_step`)."""
    for j, b in enumerate(images):
        if len(finished[b]) >= K:
            kth = sorted((h[0] for h in finished[b]), reverse=True)[K - 1]
            new_scores[j, new_scores[j] / bound_lp <= kth] = -np.inf


def _grow(old: np.ndarray, new: np.ndarray, src: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
    """Histories (nb, k, t, ...) of the source beams ``src``, each extended by ``new`` (n, ...)
    -> (n // k, k, t + 1, ...)."""
    grown = np.concatenate([old[src], new[:, None]], axis=1)  # (n, t + 1, ...)
    return grown.reshape(len(new) // k, k, *grown.shape[1:])


def _advance(
    beams: _Beams,
    masked: np.ndarray,
    logp: np.ndarray,
    alphas: np.ndarray | None,
    t: int,
    k: int,
    K: int,
    end_id: int,
    finished: list[list[tuple[float, Hypothesis]]],
    alpha_lp: float,
    bound_lp: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One step of every live image: the best 2k candidates of ``masked`` (nb, k, V) log-probs;
    ``<end>`` among the top k finishes a hypothesis, the best k others live on. Returns the
    new beams' scores, words and source beams (each (nb, k)) and which images are done."""
    nb, V = masked.shape[0], masked.shape[2]
    cand = (beams.scores[:, :, None] + masked).reshape(nb, k * V)  # (nb, k*V)
    top = min(2 * k, k * V)
    idx = np.argpartition(-cand, top - 1, axis=1)[:, :top]  # (nb, 2k) unordered
    idx = np.take_along_axis(idx, np.argsort(-np.take_along_axis(cand, idx, 1), axis=1, kind="stable"), 1)
    top_scores, src_all, word_all = np.take_along_axis(cand, idx, 1), idx // V, idx % V
    new_scores = np.full((nb, k), -np.inf)
    new_words = np.zeros((nb, k), dtype=np.int64)
    new_src = np.zeros((nb, k), dtype=np.int64)
    done = np.zeros(nb, dtype=bool)
    for j in range(nb):
        b, live = int(beams.images[j]), 0
        for c in range(top):
            s, w, src = float(top_scores[j, c]), int(word_all[j, c]), int(src_all[j, c])
            if s == -math.inf:
                break
            if w == end_id:
                if c < k:
                    hyp = _finish(beams, j, src, t, logp[j, src], end_id, alphas)
                    finished[b].append((s / length_penalty(t + 1, alpha_lp), hyp))
            else:
                new_scores[j, live], new_words[j, live], new_src[j, live] = s, w, src
                live += 1
                if live == k:
                    break
        # done when nothing is alive, or no live hypothesis can beat the K-th best finished one
        ranked = sorted((h[0] for h in finished[b]), reverse=True)
        done[j] = live == 0 or (len(ranked) >= K and ranked[K - 1] >= new_scores[j, 0] / bound_lp)
    return new_scores, new_words, new_src, done


def _finish(
    beams: _Beams, j: int, src: int, t: int, logp: np.ndarray, end_id: int, alphas: np.ndarray | None
) -> Hypothesis:
    """Hypothesis ``src`` of live image ``j`` closed by ``<end>`` at step ``t`` (logp (V,))."""
    lps = np.append(beams.lps[j, src, :t], np.float32(logp[end_id]))
    att = None
    if alphas is not None and beams.att is not None:
        att = np.concatenate([beams.att[j, src, :t], alphas[j, src][None]], 0)  # (t + 1, L)
    return Hypothesis(
        beams.hist[j, src, :t].tolist(),
        float(lps.sum(dtype=np.float64)),
        lps.astype(np.float32),
        np.append(beams.end_lps[j, src, :t], np.float32(logp[end_id])).astype(np.float32),
        att,
    )
