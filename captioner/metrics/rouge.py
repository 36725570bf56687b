"""ROUGE-L as coco-caption computes it (``pycocoevalcap.rouge.Rouge``, beta = 1.2).

For one caption h and references r_1..r_m, with LCS the longest common subsequence:

    P = max_j LCS(h, r_j) / |h|        R = max_j LCS(h, r_j) / |r_j|
    ROUGE-L = (1 + beta^2) P R / (R + beta^2 P)     (0 when P or R is 0)

P and R are maximised separately (they may come from different references), which is
coco's definition, not a per-reference F averaged. The corpus score is the plain mean
over images.

coco splits captions on single spaces, so an empty caption is one empty "word": an
empty hypothesis against an empty reference has LCS 1 and scores 1.0, and an empty
reference has length 1 in the recall denominator. We keep that behaviour so scores
agree with coco on every input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(|a| |b|) time, O(|b|) memory)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def _coco_words(tokens: Sequence[str]) -> Sequence[str]:
    """coco's ``" ".join(tokens).split(" ")``: an empty caption is one empty word."""
    return tokens if len(tokens) > 0 else ("",)


def rouge_l_image(hypothesis: Sequence[str], references: Sequence[Sequence[str]], beta: float = BETA) -> float:
    """ROUGE-L of one caption against its references."""
    if not references:
        raise ValueError("ROUGE-L needs at least one reference per image")
    hyp = _coco_words(hypothesis)
    prec_max = rec_max = 0.0
    for ref in references:
        ref = _coco_words(ref)
        lcs = lcs_length(ref, hyp)
        prec_max = max(prec_max, lcs / len(hyp))
        rec_max = max(rec_max, lcs / len(ref))
    if prec_max == 0 or rec_max == 0:
        return 0.0
    return (1 + beta**2) * prec_max * rec_max / (rec_max + beta**2 * prec_max)


@dataclass
class RougeResult:
    """Corpus ROUGE-L (mean over images) and per-image scores."""

    corpus: float
    per_image: list[float]


def rouge_l(
    hypotheses: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    beta: float = BETA,
) -> RougeResult:
    """ROUGE-L of every image and their mean."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("ROUGE-L of an empty corpus is undefined")
    per_image = [rouge_l_image(h, refs, beta) for h, refs in zip(hypotheses, references)]
    return RougeResult(sum(per_image) / len(per_image), per_image)
