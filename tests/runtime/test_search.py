"""The one search (captioner.runtime.search) on a toy step whose every probability is known.

The toy decoder is a table: the next word's logits are ``TABLE[previous word] + features[image]``,
its state counts the steps taken (so a state that is not reordered with its beam shows), and
its attention is a one-hot on location ``(step + image) % L``. Fast enough to run under
mutation testing (``make mutation MODULES=search``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from captioner.runtime import search

V, L = 8, 4
START, END = 1, 2


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class ToyStep:
    """A DecoderStep: logits = TABLE[prev] + features[row]; state = steps taken."""

    vocab_size = V

    def __init__(self, table: np.ndarray) -> None:
        self.table = table.astype(np.float32)
        self.calls: list[int] = []  # rows per call: finished hypotheses must leave

    def start(self, features):
        return features.astype(np.float32), (np.zeros((len(features), 1, 1), np.float32),)

    def step(self, words, rows, memory, state):
        self.calls.append(len(words))
        (steps,) = state
        logits = self.table[words] + memory[rows]  # (N, V)
        t = steps[:, 0, 0].astype(int)
        alpha = np.zeros((len(words), L), np.float32)
        alpha[np.arange(len(words)), (t + rows) % L] = 1.0
        return log_softmax(logits), (steps + 1,), alpha


def table(**edges: float) -> np.ndarray:
    """Logits -10 everywhere but the given 'a_b' edges (word a -> word b)."""
    t = np.full((V, V), -10.0)
    for name, value in edges.items():
        a, b = (int(x) for x in name[1:].split("_"))
        t[a, b] = value
    return t


def greedy(step, feats, max_length=6, n=0):
    return search.sequential(step, feats, START, END, max_length, n)


def test_greedy_follows_the_best_word_and_records_what_it_saw():
    step = ToyStep(table(e1_3=5, e3_4=5, e4_2=5))
    (h,) = greedy(step, np.zeros((1, V)))
    assert h.tokens == [3, 4]
    logp = log_softmax(step.table)
    expected = [logp[1, 3], logp[3, 4], logp[4, END]]
    np.testing.assert_allclose(h.logprobs, expected, rtol=1e-6)
    assert h.score == pytest.approx(sum(expected)) and h.score < 0
    np.testing.assert_allclose(h.end_logprobs, [logp[1, END], logp[3, END], logp[4, END]], rtol=1e-6)
    np.testing.assert_array_equal(h.attention, np.eye(L)[[0, 1, 2]])  # step t looks at location t


def test_max_length_forces_end_and_scores_it():
    step = ToyStep(table(e1_3=5, e3_4=5, e4_3=5))  # never wants <end>
    (h,) = greedy(step, np.zeros((1, V)), max_length=3, n=0)
    assert h.tokens == [3, 4, 3] and len(h.logprobs) == 4
    assert h.logprobs[-1] == pytest.approx(log_softmax(step.table)[3, END])
    with pytest.raises(ValueError, match="max_length"):
        greedy(step, np.zeros((1, V)), max_length=0)


def test_no_word_three_times_in_a_row_and_no_repeated_ngram():
    step = ToyStep(table(e1_3=5, e3_3=5, e3_5=4))  # 3 wants to repeat forever, 5 is its runner-up
    (h,) = greedy(step, np.zeros((1, V)), max_length=5, n=0)
    assert h.tokens[:3] == [3, 3, 5]  # a third 3 is refused
    edges = table(e1_3=5, e3_4=5, e4_3=5, e3_5=4, e5_2=5)  # 3 and 4 alternate; 5 is 3's runner-up
    (h,) = greedy(ToyStep(edges), np.zeros((1, V)), max_length=6, n=2)
    assert h.tokens == [3, 4, 3, 5]  # "3 4" again is refused, so 5, then <end>
    (free,) = greedy(ToyStep(edges), np.zeros((1, V)), max_length=6, n=0)
    assert free.tokens == [3, 4, 3, 4, 3, 4]  # no run of three, no n-gram rule: alternating


def test_banned_words_is_the_rule_table():
    history = np.array([[5, 6, 7, 5, 6], [4, 4, 9, 8, 8], [1, 2, 3, 4, 5]])
    assert np.flatnonzero(search.banned_words(history, 12, 0)[1]).tolist() == [8]
    tri = search.banned_words(history, 12, 3)
    assert np.flatnonzero(tri[0]).tolist() == [7] and not tri[2].any()
    assert np.flatnonzero(search.banned_words(history, 12, 1)[2]).tolist() == [1, 2, 3, 4, 5]
    assert not search.banned_words(history[:, :1], 12, 3).any()  # too short for anything
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        search.ngram_size(-1)
    assert search.ngram_size(None) == search.DEFAULT_NO_REPEAT_NGRAM == 3


def trap() -> ToyStep:
    """Greedy takes 3 (0.55) and then has only bad words; beam keeps 4 (0.45) whose end is sure."""
    t = np.full((V, V), -10.0)
    t[START, 3], t[START, 4] = math.log(0.55), math.log(0.45)
    t[3, 5], t[3, 6], t[3, 7] = 0.0, -0.01, -0.02  # after 3: three nearly equally likely words
    t[5, END] = t[6, END] = t[7, END] = 5.0
    t[4, END] = 10.0
    return ToyStep(t)


def test_beam_escapes_the_greedy_trap_and_n_best_is_sorted_and_distinct():
    f = np.zeros((1, V))
    (g,) = greedy(trap(), f)
    nbest = search.beam_search(trap(), f, START, END, 6, beam_size=3, num_captions=3)[0]
    assert g.tokens[0] == 3 and nbest[0].tokens == [4] and nbest[0].score > g.score
    assert len(nbest) == 3 and len({tuple(h.tokens) for h in nbest}) == 3
    assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
    for h in nbest:  # each hypothesis's records are its own path's
        assert h.score == pytest.approx(float(h.logprobs.sum())) and len(h.logprobs) == len(h.tokens) + 1
        np.testing.assert_array_equal(h.attention, np.eye(L)[np.arange(len(h.tokens) + 1) % L])
    one = search.beam_search(trap(), f, START, END, 6, beam_size=1)[0][0]
    assert one.tokens == g.tokens and one.score == pytest.approx(g.score)
    with pytest.raises(ValueError, match="num_captions"):
        search.beam_search(trap(), f, START, END, 6, beam_size=2, num_captions=3)


def test_length_penalty_prefers_longer_captions():
    t = np.full((V, V), -10.0)
    t[START, 3], t[START, 4] = 0.0, 0.0
    t[3, END] = 10.0  # "3": one word
    t[4, 5] = 10.0
    t[5, 6] = 10.0
    t[6, END] = 10.0  # "4 5 6": three words, nearly as likely
    t[START, 3] += 0.3
    f = np.zeros((1, V))
    plain = search.beam_search(ToyStep(t), f, START, END, 6, beam_size=2, length_penalty_alpha=0.0)[0][0]
    long = search.beam_search(ToyStep(t), f, START, END, 6, beam_size=2, length_penalty_alpha=3.0)[0][0]
    assert plain.tokens == [3] and long.tokens == [4, 5, 6]
    assert search.length_penalty(4, 0.0) == 1.0 and search.length_penalty(1, 1.0) == 1.0
    assert search.length_penalty(7, 1.0) == pytest.approx(2.0)


def test_batched_equals_one_image_at_a_time_and_finished_rows_leave():
    rng = np.random.default_rng(0)
    t = rng.normal(0, 2, (V, V))
    t[:, END] += 1.0
    feats = rng.normal(0, 2, (5, V))
    step = ToyStep(t)
    batched = greedy(step, feats, max_length=8, n=2)
    assert step.calls == sorted(step.calls, reverse=True) and step.calls[-1] < 5  # rows drop out
    for b in range(5):
        (one,) = greedy(ToyStep(t), feats[b : b + 1], max_length=8, n=2)
        assert one.tokens == batched[b].tokens and one.score == pytest.approx(batched[b].score)
        np.testing.assert_array_equal(one.attention[:, :], np.eye(L)[(np.arange(len(one.tokens) + 1) + 0) % L])
    beams = search.beam_search(ToyStep(t), feats, START, END, 8, 3, 0.5, 2, num_captions=2)
    for b in range(5):
        alone = search.beam_search(ToyStep(t), feats[b : b + 1], START, END, 8, 3, 0.5, 2, num_captions=2)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in beams[b]]
        np.testing.assert_allclose([h.score for h in alone], [h.score for h in beams[b]], rtol=1e-6)


def test_rows_map_hypotheses_to_their_image():
    """Two images whose features prefer different words: each caption follows its own image."""
    t = table(e3_2=5, e4_2=5)
    feats = np.zeros((2, V))
    feats[0, 3], feats[1, 4] = 8.0, 8.0
    g = greedy(ToyStep(t), feats)
    beams = search.beam_search(ToyStep(t), feats, START, END, 6, beam_size=2)
    assert [h.tokens for h in g] == [[3], [4]] == [b[0].tokens for b in beams]
    assert g[1].attention[0].argmax() == 1  # location (step + image) % L: image 1 at step 0


def test_sampling_is_seeded_and_cold_sampling_is_greedy():
    rng = np.random.default_rng(3)
    t = rng.normal(0, 1.5, (V, V))
    feats = rng.normal(0, 1, (6, V))

    def sample(seed, temperature):
        hyps = search.sequential(ToyStep(t), feats, START, END, 8, 0, temperature, np.random.default_rng(seed))
        return [h.tokens for h in hyps]

    assert sample(1, 1.5) == sample(1, 1.5)
    assert sample(1, 1.5) != sample(2, 1.5)  # (with these numbers) another seed, other captions
    assert sample(1, 1e-4) == [h.tokens for h in greedy(ToyStep(t), feats, max_length=8)]
    with pytest.raises(ValueError, match="temperature"):
        sample(1, 0.0)


def test_a_state_follows_its_beam():
    """The toy state counts steps; attention reads it, so a state left with the wrong beam
    would put a hypothesis's attention on another location than its step."""
    t = np.random.default_rng(5).normal(0, 2, (V, V))
    for b, hyps in enumerate(search.beam_search(ToyStep(t), np.zeros((3, V)), START, END, 7, 4, num_captions=4)):
        for h in hyps:
            steps = np.arange(len(h.tokens) + 1)
            np.testing.assert_array_equal(h.attention.argmax(axis=1), (steps + b) % L)


class PlainStep(ToyStep):
    """The toy decoder without attention (a pooled decoder's step returns None)."""

    def step(self, words, rows, memory, state):
        logp, state, _ = super().step(words, rows, memory, state)
        return logp, state, None


def test_beam_applies_the_repeat_rules_and_the_forced_end():
    edges = table(e1_3=5, e3_3=5, e3_4=4, e4_3=5)  # 3 wants to repeat; 3 and 4 alternate after it
    f = np.zeros((1, V))
    (best, *_rest) = search.beam_search(ToyStep(edges), f, START, END, 5, beam_size=2, no_repeat_ngram_size=0)[0]
    assert len(best.tokens) == 5 and not any(
        best.tokens[i] == best.tokens[i + 1] == best.tokens[i + 2] for i in range(3)
    )
    assert best.logprobs[-1] == pytest.approx(log_softmax(edges)[best.tokens[-1], END])  # <end> forced at the limit
    for h in search.beam_search(ToyStep(edges), f, START, END, 6, beam_size=3, no_repeat_ngram_size=2, num_captions=3)[
        0
    ]:
        pairs = list(zip(h.tokens, h.tokens[1:]))
        assert len(pairs) == len(set(pairs)), h.tokens


def test_one_word_at_most_and_the_messages_name_the_fix():
    edges = table(e1_3=5, e3_4=5)
    f = np.zeros((1, V))
    assert greedy(ToyStep(edges), f, max_length=1)[0].tokens == [3]
    assert search.beam_search(ToyStep(edges), f, START, END, 1, beam_size=2)[0][0].tokens == [3]
    with pytest.raises(ValueError, match=r"^max_length must be >= 1$"):
        search.beam_search(ToyStep(edges), f, START, END, 0)
    with pytest.raises(ValueError, match=r"^temperature must be > 0 \(use greedy for temperature 0\)$"):
        search.sequential(ToyStep(edges), f, START, END, 3, temperature=-1.0)
    with pytest.raises(ValueError, match=r"^beam_size must be >= 1 and num_captions between 1 and beam_size$"):
        search.beam_search(ToyStep(edges), f, START, END, 3, beam_size=0)
    with pytest.raises(ValueError, match=r"^no_repeat_ngram_size must be >= 0 \(0 switches it off\)$"):
        search.beam_search(ToyStep(edges), f, START, END, 3, no_repeat_ngram_size=-2)


def test_a_step_without_attention_records_none():
    t = np.random.default_rng(2).normal(0, 2, (V, V))
    f = np.zeros((2, V))
    assert all(h.attention is None for h in greedy(PlainStep(t), f))
    assert all(h.attention is None for hs in search.beam_search(PlainStep(t), f, START, END, 6) for h in hs)
    (h,) = greedy(PlainStep(t), f[:1])
    assert h.logprobs.dtype == np.float32 and h.end_logprobs.dtype == np.float32


def test_sampling_follows_the_model_probabilities():
    t = np.full((V, V), -30.0)
    t[START, 3], t[START, 4] = math.log(0.8), math.log(0.2)  # the first word: 3 four times as often as 4
    t[3, END] = t[4, END] = 10.0
    feats = np.zeros((4000, V))
    hyps = search.sequential(ToyStep(t), feats, START, END, 3, 0, 1.0, np.random.default_rng(0))
    share = np.mean([h.tokens == [3] for h in hyps])
    assert abs(share - 0.8) < 0.03 and all(h.tokens in ([3], [4]) for h in hyps)
    hot = search.sequential(ToyStep(t), feats[:2000], START, END, 3, 0, 100.0, np.random.default_rng(0))
    first = [h.tokens[0] if h.tokens else END for h in hot]
    assert np.mean(np.array(first) == 3) < 0.25  # a high temperature flattens toward 1/V for every word


class TimedStep(ToyStep):
    """The toy decoder with logits that also depend on the step (``bias[t]``), so two captions
    made of the same word pairs in another order score differently (no ties)."""

    def __init__(self, table: np.ndarray, bias: np.ndarray) -> None:
        super().__init__(table)
        self.bias = bias.astype(np.float32)  # (steps, V)

    def step(self, words, rows, memory, state):
        t = state[0][:, 0, 0].astype(int)  # (N,) steps taken by each row
        logp, new_state, alpha = super().step(words, rows, memory, state)
        return log_softmax(logp + self.bias[t]), new_state, alpha


def reference_beam(step: TimedStep, feat: np.ndarray, k: int, K: int, max_length: int, alpha: float, n: int):
    """The beam search rules, one image at a time and every beam slot kept to the end: the
    best 2k extensions; <end> among the top k finishes a caption, the best k others live on;
    stop when the K-th best finished beats every live beam. -> [(tokens, score)] best first."""
    logp_of = [log_softmax(log_softmax(step.table + feat) + b) for b in step.bias]  # (V, V) per step
    beams: list[tuple[float, list[int]]] = [(0.0, [])]
    finished: list[tuple[float, list[int], float]] = []  # (ranked score, tokens, score)
    bound = search.length_penalty(max_length + 1, alpha)
    for t in range(max_length + 1):
        cands = []
        for score, toks in beams:
            lp = logp_of[t][toks[-1] if toks else START]
            banned = search.banned_words(np.array([toks], np.int64).reshape(1, t), V, n)[0]
            for w in range(V):
                if not banned[w] and (t < max_length or w == END):
                    cands.append((score + float(lp[w]), [*toks, w]))
        cands.sort(key=lambda c: -c[0])
        beams = []
        for c, (s, toks) in enumerate(cands[: 2 * k]):
            if toks[-1] == END:
                if c < k:
                    finished.append((s / search.length_penalty(t + 1, alpha), toks[:-1], s))
            elif len(beams) < k:
                beams.append((s, toks))
        ranked = sorted(finished, key=lambda f: -f[0])
        if not beams or (len(ranked) >= K and ranked[K - 1][0] >= beams[0][0] / bound):
            break
    return [(toks, s) for _, toks, s in sorted(finished, key=lambda f: -f[0])[:K]]


@pytest.mark.parametrize("k, K, alpha, n", [(3, 1, 0.0, 3), (3, 3, 0.0, 3), (4, 2, 0.8, 0), (5, 5, 1.5, 2)])
def test_n_best_equals_the_rules_run_with_every_beam_kept(k, K, alpha, n):
    """Empty slots and beams that can no longer reach an image's K best skip the decoder
    step; the answers stay those of the plain search that runs every beam to the end."""
    rng = np.random.default_rng(k * 10 + K)
    t = rng.normal(0, 1.5, (V, V))
    t[:, END] += 0.5
    feats = rng.normal(0, 1.5, (6, V))
    step = TimedStep(t, rng.normal(0, 1.0, (8, V)))
    got = search.beam_search(step, feats, START, END, 7, k, alpha, n, num_captions=K)
    for b in range(len(feats)):
        want = reference_beam(step, feats[b : b + 1].astype(np.float32), k, K, 7, alpha, n)
        assert [h.tokens for h in got[b]] == [toks for toks, _ in want]
        np.testing.assert_allclose([h.score for h in got[b]], [s for _, s in want], rtol=1e-5)
    assert step.calls[0] == len(feats)  # the first step runs one row per image, not k
    assert sum(step.calls) < k * len(feats) * len(step.calls)  # and later steps skip the empty and hopeless beams
