"""From search hypotheses to the captions users get: the unsure-word cut, trust and labels.

Everything here reads what the search recorded (each word's log-probability, ``<end>``'s at
every step, the attention weights); nothing runs the decoder again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..trust import OUT_OF_DOMAIN_CONFIDENCE, TrustStats, caption_statistic
from ..vocab import Vocabulary
from .search import Hypothesis

MAX_LABELS = 20  # the most labels one image may ask for


@dataclass(frozen=True)
class Label:
    """One ImageNet class the backbone sees, with the classifier's probability."""

    name: str
    probability: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "probability": round(self.probability, 4)}

    def __str__(self) -> str:
        return f"{self.name} {self.probability * 100:.0f} %"


def top_labels(logits: np.ndarray, classes: Sequence[str], k: int) -> list[list[Label]]:
    """The ``k`` most probable classes of each row of ``logits`` (B, C), best first."""
    if not 1 <= int(k) <= MAX_LABELS:
        raise ValueError(f"labels must be an integer from 1 to {MAX_LABELS}")
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)  # (B, C)
    top = np.argsort(-probs, axis=1, kind="stable")[:, : int(k)]  # (B, k)
    return [[Label(classes[i], float(p[i])) for i in row] for row, p in zip(top, probs)]


@dataclass
class CaptionResult:
    caption: str
    score: float  # log-probability of the caption (words and <end>) under the model
    tokens: list[int] = field(default_factory=list)
    # How far to trust it (captioner.trust); None where the checkpoint cannot tell.
    confidence: float | None = None  # calibrated chance in [0, 1] that the caption is right
    in_domain: bool | None = None  # whether the image looks like the training images
    domain_distance: float | None = None  # its distance to them (in domain up to domain_threshold)
    domain_threshold: float | None = None  # the checkpoint's threshold on that distance
    labels: list | None = None  # top ImageNet classes (Label), when asked for
    logprobs: list[float] = field(default_factory=list)  # each word's log-prob, then <end>'s
    attention: np.ndarray | None = None  # (words + 1, L) where the model looked, when asked for
    candidates: list[CaptionResult] = field(default_factory=list)  # n-best: the K best, this one first


#: Words no caption may end on, and where a phrase starts (English, the shipped vocabulary's
#: language): articles and other determiners, numbers, prepositions, conjunctions, auxiliaries
#: and relative pronouns. Cutting a caption before an unsure word keeps only whole phrases.
_FUNCTION_WORDS = """a an the this that these those some any each every no another its his her their our my your
    one two three four five six seven eight nine ten several many few both
    on in at of with without by for from to into onto over under above below behind beside besides
    between near next through across along around against among beneath inside outside toward towards
    up down off out about after before during past upon via like
    and or but nor while as than so yet if
    is are was were be being been has have had who which whose"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())


def function_word_ids(vocab: Vocabulary) -> frozenset[int]:
    """The ids of :data:`FUNCTION_WORDS` and of numerals (``3``, ``12``) in ``vocab``."""
    return frozenset(i for i, w in enumerate(vocab.itos) if w.lower() in FUNCTION_WORDS or w.isdigit())


def cut_unsure(hyp: Hypothesis, floor: float, function_words: frozenset[int] = frozenset()) -> Hypothesis:
    """The caption ended at a phrase boundary before its first word of probability < ``floor``,
    scored as the model scores it: the kept words, then ``<end>`` after them (recorded by the
    search at every prefix).

    The rule, the same for every dataset: a phrase starts at a function word (``function_words``,
    the ids of :data:`FUNCTION_WORDS`), so when the unsure word is not one itself, its phrase
    (from the last function word before it) is left out too; then the caption never ends on a
    function word. Nothing left: the empty caption. "a dog on a red [boat]" -> "a dog"."""
    below = np.flatnonzero(hyp.logprobs[: len(hyp.tokens)] < math.log(floor))
    if not len(below):
        return hyp
    k = int(below[0])
    if function_words and hyp.tokens[k] not in function_words:
        k = next((j for j in range(k - 1, -1, -1) if hyp.tokens[j] in function_words), 0)
    while k > 0 and hyp.tokens[k - 1] in function_words:
        k -= 1
    lps = np.append(hyp.logprobs[:k], hyp.end_logprobs[k]).astype(np.float32)
    att = None if hyp.attention is None else hyp.attention[: k + 1]
    return Hypothesis(hyp.tokens[:k], float(lps.sum(dtype=np.float64)), lps, hyp.end_logprobs[: k + 1], att)


def to_result(hyp: Hypothesis, vocab: Vocabulary, attention: bool) -> CaptionResult:
    return CaptionResult(
        vocab.decode(hyp.tokens),
        hyp.score,
        list(hyp.tokens),
        logprobs=[float(v) for v in hyp.logprobs],
        attention=hyp.attention if attention else None,
    )


def finish(
    nbest: list[list[Hypothesis]],
    vocab: Vocabulary,
    trust: TrustStats,
    distances: np.ndarray | None,
    *,
    min_word_prob: float,
    attention: bool = False,
) -> list[CaptionResult]:
    """One result per image (its n-best as ``candidates`` when there are several): captions of
    out-of-domain images cut before their first unsure word, confidence from the recorded
    log-probs (capped out of the domain), the distance and the flag. What belongs to the
    image (distance, flag) is worked out once and shared by its candidates; the confidences
    of the whole batch come from one call of the calibration."""
    domain = trust.domain
    groups: list[list[CaptionResult]] = []
    function_words: frozenset[int] | None = None  # only out of the domain, when captions get cut
    for b, hyps in enumerate(nbest):
        outside = domain is not None and distances is not None and bool(distances[b] > domain.threshold)
        if outside and min_word_prob > 0:
            function_words = _function_words(vocab) if function_words is None else function_words
            hyps = _distinct([cut_unsure(h, min_word_prob, function_words) for h in hyps])
        group = [to_result(h, vocab, attention) for h in hyps]
        if domain is not None and distances is not None:
            distance, threshold = float(distances[b]), float(domain.threshold)
            fields = (round(distance, 4), round(threshold, 4), bool(distance <= threshold))
            for r in group:
                r.domain_distance, r.domain_threshold, r.in_domain = fields
        groups.append(group)
    if trust.calibration is not None:
        _confidences([r for g in groups for r in g], trust)
    results = []
    for group in groups:
        best = group[0]
        best.candidates = group if len(group) > 1 else []
        results.append(best)
    return results


_FUNCTION_WORDS_CACHE: dict[int, tuple[Vocabulary, int, frozenset[int]]] = {}


def _function_words(vocab: Vocabulary) -> frozenset[int]:
    """:func:`function_word_ids` of ``vocab``, worked out once per vocabulary (a scan of every
    word) rather than once per batch."""
    got = _FUNCTION_WORDS_CACHE.get(id(vocab))
    if got is not None and got[0] is vocab and got[1] == len(vocab.itos):
        return got[2]
    ids = function_word_ids(vocab)
    if len(_FUNCTION_WORDS_CACHE) >= 8:  # a few models per process; the entry keeps its vocabulary alive
        _FUNCTION_WORDS_CACHE.clear()
    _FUNCTION_WORDS_CACHE[id(vocab)] = (vocab, len(vocab.itos), ids)
    return ids


def _distinct(hyps: list[Hypothesis]) -> list[Hypothesis]:
    """Cutting can make two candidates the same caption: keep the first (best) of each."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for h in hyps:
        if tuple(h.tokens) not in seen:
            seen.add(tuple(h.tokens))
            out.append(h)
    return out


def _confidences(results: list[CaptionResult], trust: TrustStats) -> None:
    """Each result's calibrated confidence from its recorded log-probs, capped out of the
    domain (the calibration says nothing out there)."""
    calibration = trust.calibration
    if calibration is None or not results:
        return
    stats = [caption_statistic(np.asarray(r.logprobs), calibration.statistic) for r in results]
    for r, c in zip(results, calibration.confidence(stats)):
        r.confidence = round(float(c), 4)
        if r.in_domain is False:
            r.confidence = min(r.confidence, OUT_OF_DOMAIN_CONFIDENCE)
