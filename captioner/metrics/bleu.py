"""BLEU-1..4 for captions, computed exactly as coco-caption computes them.

Two implementations live here:

* :func:`coco_bleu` - the BLEU the project reports. It reproduces
  ``pycocoevalcap.bleu.bleu_scorer.BleuScorer.compute_score(option="closest")``
  (what ``pycocoevalcap.bleu.Bleu`` calls) to floating-point rounding, including its
  two small constants, and also returns its per-image scores.
* :func:`nltk_bleu` - nltk's ``corpus_bleu`` over all references of each image, kept
  as an independent cross-check.

Both use modified (clipped) n-gram precision with every reference of an image, sum
numerators and denominators over the corpus (micro-average), take the geometric mean
of the precisions 1..n, and apply the brevity penalty with the *closest* reference
length per image (ties go to the shorter reference). They differ in exactly three ways
(see docs/metrics.md for worked numbers):

1. n-gram denominator of a hypothesis shorter than n words: coco adds
   ``max(0, len - n + 1)`` (so 0), nltk adds ``max(1, ...)`` (so 1). A corpus with a
   caption of fewer than 4 words therefore gets a lower nltk BLEU-4.
2. An order with zero matches in the whole corpus: coco multiplies by
   ``(0 + 1e-15) / (guess + 1e-9)`` and returns a tiny positive number (about 1e-4 for
   BLEU-4); nltk returns 0 (``SmoothingFunction.method0``).
3. coco adds ``tiny = 1e-15`` to match counts and hypothesis length and ``small = 1e-9``
   to n-gram counts and reference length everywhere; this moves ordinary scores by
   about 1e-9 relative, far below reporting precision.

So when every hypothesis has at least ``max_n`` words and every order has at least one
match, the two agree to about 1e-9 (the tests check 1e-6).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

# coco-caption's constants (bleu_scorer.py): "tiny" keeps a 0 match count from making
# log(0); "small" keeps a 0 denominator from dividing by zero.
COCO_TINY = 1e-15
COCO_SMALL = 1e-9


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Counts of every k-gram (as a tuple) of ``tokens`` for k = 1..n."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        counts.update(zip(*(tokens[i:] for i in range(k))))  # the k-grams (t_i, ..., t_{i+k-1})
    return counts


@dataclass
class BleuStats:
    """The sufficient statistics of one image (coco's ``cook_test`` result).

    ``correct[k]`` / ``guess[k]`` are the clipped matches and the hypothesis n-gram count
    of order k+1; ``ref_len`` is the closest reference length (ties to the shorter one).
    """

    test_len: int
    ref_len: int
    correct: list[int]
    guess: list[int]


def image_stats(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> BleuStats:
    """Clipped n-gram matches and lengths of one hypothesis against its references."""
    if not references:
        raise ValueError("BLEU needs at least one reference per image")
    max_ref_counts: dict[tuple, int] = {}
    for ref in references:
        for ngram, count in ngram_counts(ref, max_n).items():
            if count > max_ref_counts.get(ngram, 0):
                max_ref_counts[ngram] = count
    test_len = len(hypothesis)
    correct = [0] * max_n
    for ngram, count in ngram_counts(hypothesis, max_n).items():
        correct[len(ngram) - 1] += min(count, max_ref_counts.get(ngram, 0))
    guess = [max(0, test_len - k + 1) for k in range(1, max_n + 1)]
    # closest reference length; on a tie the shorter one (coco: min over (|diff|, len))
    ref_len = min((abs(len(r) - test_len), len(r)) for r in references)[1]
    return BleuStats(test_len, ref_len, correct, guess)


def _coco_bleus(correct: Sequence[float], guess: Sequence[float], test_len: float, ref_len: float) -> list[float]:
    """coco's formula: BLEU-k = BP * prod_{i<=k} ((c_i + tiny) / (g_i + small)) ** (1/k)."""
    bleus = []
    product = 1.0
    for k in range(len(correct)):
        product *= (float(correct[k]) + COCO_TINY) / (float(guess[k]) + COCO_SMALL)
        bleus.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + COCO_TINY) / (ref_len + COCO_SMALL)  # hypothesis / reference length
    if ratio < 1:
        brevity = math.exp(1 - 1 / ratio)
        bleus = [b * brevity for b in bleus]
    return bleus


@dataclass
class BleuResult:
    """Corpus BLEU-1..n (``corpus[k]`` is BLEU-(k+1)) and the same per image."""

    corpus: list[float]
    per_image: list[list[float]]  # per_image[i][k]: BLEU-(k+1) of image i
    stats: list[BleuStats] = field(default_factory=list)  # each image's counts (for resampling)


def coco_bleu(
    hypotheses: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    max_n: int = 4,
) -> BleuResult:
    """Corpus and per-image BLEU-1..max_n exactly as pycocoevalcap's ``Bleu`` scorer.

    ``hypotheses[i]`` is the token list of image i's caption, ``references[i]`` the token
    lists of its reference captions. Per-image scores apply each image's own brevity
    penalty (coco's ``bleu_list``); they are not what the corpus score averages.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("BLEU of an empty corpus is undefined")
    total_correct = [0] * max_n
    total_guess = [0] * max_n
    total_test = total_ref = 0
    per_image = []
    stats = []
    for hyp, refs in zip(hypotheses, references):
        s = image_stats(hyp, refs, max_n)
        stats.append(s)
        per_image.append(_coco_bleus(s.correct, s.guess, s.test_len, s.ref_len))
        total_test += s.test_len
        total_ref += s.ref_len
        for k in range(max_n):
            total_correct[k] += s.correct[k]
            total_guess[k] += s.guess[k]
    corpus = _coco_bleus(total_correct, total_guess, total_test, total_ref)
    return BleuResult(corpus, per_image, stats)


def nltk_bleu(
    hypotheses: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    max_n: int = 4,
) -> list[float]:
    """nltk ``corpus_bleu`` BLEU-1..max_n (uniform weights, no smoothing), all references per image.

    nltk's warning about orders with zero matches is silenced: the value (0) says it.
    """
    from nltk.translate.bleu_score import corpus_bleu

    weights = [tuple([1.0 / k] * k) for k in range(1, max_n + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = corpus_bleu(
            [[list(r) for r in refs] for refs in references],
            [list(h) for h in hypotheses],
            weights=weights,
        )
    return [float(s) for s in scores]
