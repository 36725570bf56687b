"""Caption metrics: BLEU-1..4, CIDEr-D, ROUGE-L (pure Python, coco-caption's numbers),
METEOR and SPICE (coco-caption's Java programs, skipped when they cannot run).

Start with :func:`score_captions`; docs/metrics.md explains every choice. The scene
accuracy of the built-in dataset lives in ``captioner.metrics.scene`` and is imported
from there (it is not loaded here).
"""

from captioner.metrics.bleu import BleuResult, coco_bleu, nltk_bleu
from captioner.metrics.cider import CiderResult, cider_d
from captioner.metrics.meteor_spice import MetricUnavailable
from captioner.metrics.rouge import RougeResult, rouge_l
from captioner.metrics.score import (
    DEFAULT_METRICS,
    METRIC_GROUPS,
    METRIC_LABELS,
    CaptionScores,
    score_captions,
    score_tokenized,
)
from captioner.metrics.tokenize import TokenizedCorpus, tokenize_corpus

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_GROUPS",
    "METRIC_LABELS",
    "BleuResult",
    "CaptionScores",
    "CiderResult",
    "MetricUnavailable",
    "RougeResult",
    "TokenizedCorpus",
    "cider_d",
    "coco_bleu",
    "nltk_bleu",
    "rouge_l",
    "score_captions",
    "score_tokenized",
    "tokenize_corpus",
]
