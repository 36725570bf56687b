"""CIDEr-D, the variant coco-caption reports under the name "CIDEr".

Reproduces ``pycocoevalcap.cider.Cider`` (``CiderScorer``, n=4, sigma=6):

* every caption becomes four TF-IDF vectors (1- to 4-grams); term frequency is the raw
  n-gram count, IDF is ``log(N) - log(max(1, df))`` where N is the number of evaluated
  images and ``df`` the number of images whose references contain the n-gram. The IDF
  therefore comes from the references being scored, not from a fixed corpus: the same
  caption scores differently in a different test set, and a corpus of one image scores 0
  (every n-gram has IDF log 1 - log 1 = 0).
* similarity to each reference, per order: ``sum(min(h, r) * r) / (|h| |r|)`` (the "D"
  clipping: repeating a word cannot buy score), times the length penalty
  ``exp(-(len_h - len_r)^2 / (2 sigma^2))``;
* image score = mean over the 4 orders, averaged over its references, times 10;
  corpus score = mean of the image scores.

One coco detail we do not copy literally: coco measures "length" as the number of
*bigrams*, not words. For two non-empty captions the difference is the same; when
either is empty its vector is zero and the similarity is 0 whatever the penalty, so
using word counts gives identical scores.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from captioner.metrics.bleu import ngram_counts


@dataclass
class CiderResult:
    """Corpus CIDEr-D and per-image scores (same order as the input)."""

    corpus: float
    per_image: list[float]


def _tfidf(
    counts: Counter, idf: dict[tuple, float], default_idf: float, n: int
) -> tuple[list[dict[tuple, float]], list[float]]:
    """Per-order TF-IDF vectors and their L2 norms for one caption's n-gram counts.

    ``idf`` holds every n-gram seen in the references; any other n-gram has df 0, so its
    IDF is ``default_idf`` = log(N) - log(max(1, 0)) = log(N).
    """
    vecs: list[dict[tuple, float]] = [{} for _ in range(n)]
    sq = [0.0] * n
    for ngram, tf in counts.items():
        k = len(ngram) - 1
        w = float(tf) * idf.get(ngram, default_idf)
        vecs[k][ngram] = w
        sq[k] += w * w
    return vecs, [math.sqrt(v) for v in sq]


def cider_d(
    hypotheses: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    n: int = 4,
    sigma: float = 6.0,
) -> CiderResult:
    """CIDEr-D of token-list captions against their references (see the module docstring)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("CIDEr of an empty corpus is undefined")
    ref_counts = [[ngram_counts(r, n) for r in refs] for refs in references]
    for i, image_refs in enumerate(ref_counts):
        if not image_refs:
            raise ValueError(f"CIDEr needs at least one reference per image (image #{i} has none)")

    # document frequency: in how many images' reference sets an n-gram occurs
    df: Counter = Counter()
    for image_refs in ref_counts:
        df.update(set().union(*image_refs))
    log_n = math.log(float(len(ref_counts)))
    idf = {ngram: log_n - math.log(max(1.0, float(d))) for ngram, d in df.items()}

    two_sigma_sq = 2.0 * sigma * sigma
    per_image = []
    for hyp, refs_c, refs in zip(hypotheses, ref_counts, references):
        h_vec, h_norm = _tfidf(ngram_counts(hyp, n), idf, log_n, n)
        total = [0.0] * n
        for r_c, r_tokens in zip(refs_c, refs):
            r_vec, r_norm = _tfidf(r_c, idf, log_n, n)
            penalty = math.exp(-((len(hyp) - len(r_tokens)) ** 2) / two_sigma_sq)
            for k in range(n):
                rk = r_vec[k]
                dot = 0.0
                for ngram, w in h_vec[k].items():
                    wr = rk.get(ngram, 0.0)
                    dot += min(w, wr) * wr  # clipped: a repeated n-gram counts at most as often as in the ref
                if h_norm[k] != 0 and r_norm[k] != 0:
                    dot /= h_norm[k] * r_norm[k]
                total[k] += dot * penalty
        per_image.append(sum(total) / n / len(refs) * 10.0)
    return CiderResult(sum(per_image) / len(per_image), per_image)
