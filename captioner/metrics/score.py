"""One entry point for all caption metrics: :func:`score_captions`.

    scores = score_captions({"img1": "a dog on grass"}, {"img1": ["a dog runs on the grass", ...]})
    scores["bleu_4"], scores["cider_d"]          # corpus values (a Mapping of name -> float)
    scores.per_image["cider_d"]["img1"]           # per-image values, for "worst examples"
    scores.skipped                                # {"spice": "SPICE needs Stanford CoreNLP ..."}

Metric groups and the values they produce (all on coco-caption's scale: BLEU, METEOR,
ROUGE-L and SPICE in [0, 1]; CIDEr-D is 10x a mean cosine, typically 0-3):

    bleu    bleu_1 bleu_2 bleu_3 bleu_4   coco-caption's BLEU (closest reference length);
                                          nltk corpus_bleu values go to ``cross_checks``
    cider   cider_d                       CIDEr-D, IDF from the evaluated references
    rouge   rouge_l                       ROUGE-L, beta = 1.2
    meteor  meteor                        METEOR 1.5 (Java); skipped if it cannot run
    spice   spice                         SPICE 1.0 (Java + CoreNLP); skipped if it cannot run
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from captioner.errors import CaptionerError
from captioner.metrics import meteor_spice
from captioner.metrics.bleu import BleuStats, coco_bleu, nltk_bleu
from captioner.metrics.cider import cider_d
from captioner.metrics.rouge import rouge_l
from captioner.metrics.tokenize import TokenizedCorpus, Tokenizer, resolve_tokenizer, tokenize_corpus
from captioner.vocab import tokenize

METRIC_GROUPS: tuple[str, ...] = ("bleu", "cider", "rouge", "meteor", "spice")
DEFAULT_METRICS = METRIC_GROUPS

# value name -> label for tables and reports
METRIC_LABELS: dict[str, str] = {
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "cider_d": "CIDEr-D",
    "rouge_l": "ROUGE-L",
    "meteor": "METEOR",
    "spice": "SPICE",
}


@dataclass
class CaptionScores(Mapping):
    """Corpus scores (this object is a read-only ``{name: float}`` mapping) plus details.

    ``per_image[name][image_id]`` holds per-image scores for every metric that has them
    (per-image BLEU is coco's, with each image's own brevity penalty). ``skipped`` maps a
    requested metric group that could not run to the reason. ``cross_checks`` holds nltk's
    ``corpus_bleu`` BLEU-1..4 (``nltk_bleu_1``..); docs/metrics.md explains when it differs.
    """

    metrics: dict[str, float]
    per_image: dict[str, dict[Hashable, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    cross_checks: dict[str, float] = field(default_factory=dict)
    ids: list[Hashable] = field(default_factory=list)
    bleu_stats: list[BleuStats] = field(default_factory=list)  # per image, in ``ids`` order
    tokenizer: str = ""  # "ptb", "ours", or the name of the function that tokenized

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def worst(self, metric: str = "cider_d", k: int = 10) -> list[tuple[Hashable, float]]:
        """The ``k`` images with the lowest per-image ``metric``, lowest first (ties in input order)."""
        if metric not in self.per_image:
            have = ", ".join(sorted(self.per_image)) or "none"
            raise KeyError(f"no per-image scores for {metric!r} (have: {have})")
        scores = self.per_image[metric]
        order = sorted(range(len(self.ids)), key=lambda i: (_nan_last(scores[self.ids[i]]), i))
        return [(self.ids[i], scores[self.ids[i]]) for i in order[:k]]

    def per_image_rows(self) -> list[dict]:
        """One ``{"image_id": id, <metric>: value, ...}`` dict per image, in input order."""
        return [{"image_id": i, **{m: s[i] for m, s in self.per_image.items()}} for i in self.ids]

    def to_dict(self) -> dict:
        """JSON-ready summary: metrics, skipped, cross_checks and per-image rows (NaN -> None)."""

        def clean(d: dict) -> dict:
            return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

        return {
            "metrics": clean(self.metrics),
            "skipped": dict(self.skipped),
            "cross_checks": clean(self.cross_checks),
            "per_image": [clean(row) for row in self.per_image_rows()],
        }


def _nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x


def score_tokenized(
    corpus: TokenizedCorpus,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    meteor_timeout: float = meteor_spice.METEOR_TIMEOUT_S,
    spice_timeout: float = meteor_spice.SPICE_TIMEOUT_S,
    nltk_cross_check: bool = True,
) -> CaptionScores:
    """Score an already tokenized corpus (see :func:`score_captions`)."""
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in metrics if m not in METRIC_GROUPS]
    if unknown:
        raise CaptionerError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_GROUPS)}")
    if len(corpus) == 0:
        raise CaptionerError("there are no captions to score")
    ids, hyps, refs = corpus.ids, corpus.hypotheses, corpus.references
    out = CaptionScores(metrics={}, ids=list(ids))

    def put(name: str, corpus_value: float, per_image: Sequence[float] | None) -> None:
        out.metrics[name] = float(corpus_value)
        if per_image is not None:
            out.per_image[name] = {i: float(s) for i, s in zip(ids, per_image)}

    if "bleu" in metrics:
        bleu = coco_bleu(hyps, refs, 4)
        for k in range(4):
            put(f"bleu_{k + 1}", bleu.corpus[k], [row[k] for row in bleu.per_image])
        out.bleu_stats = bleu.stats
        if nltk_cross_check:  # nltk (exact Fractions) is several times slower than coco_bleu
            for k, value in enumerate(nltk_bleu(hyps, refs, 4)):
                out.cross_checks[f"nltk_bleu_{k + 1}"] = value
    if "cider" in metrics:
        cider = cider_d(hyps, refs)
        put("cider_d", cider.corpus, cider.per_image)
    if "rouge" in metrics:
        rouge = rouge_l(hyps, refs)
        put("rouge_l", rouge.corpus, rouge.per_image)
    java_metrics = {"meteor": (meteor_spice.meteor, meteor_timeout), "spice": (meteor_spice.spice, spice_timeout)}
    for name, (fn, timeout) in java_metrics.items():
        if name not in metrics:
            continue
        try:
            value, per_image = fn(corpus.hypothesis_strings(), corpus.reference_strings(), timeout=timeout)
        except meteor_spice.MetricUnavailable as e:
            out.skipped[name] = str(e)
            continue
        put(name, value, per_image)
    return out


def score_captions(
    predictions: Mapping[Any, str],  # image id (any hashable) -> caption
    references: Mapping[Any, Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    tokenizer: Tokenizer | str = tokenize,
    meteor_timeout: float = meteor_spice.METEOR_TIMEOUT_S,
    spice_timeout: float = meteor_spice.SPICE_TIMEOUT_S,
    nltk_cross_check: bool = True,
) -> CaptionScores:
    """Score one predicted caption per image against that image's reference captions.

    ``predictions`` maps image id -> caption, ``references`` image id -> list of captions;
    both must cover the same ids (:class:`CaptionerError` otherwise). Captions are
    tokenized with ``tokenizer`` (the project's :func:`captioner.vocab.tokenize` by
    default; ``"ptb"`` for coco-caption's, ``"auto"`` for coco's when Java is there:
    see :mod:`captioner.metrics.tokenize`). ``metrics`` picks groups from :data:`METRIC_GROUPS`. METEOR and SPICE are
    skipped (reason in ``.skipped``) when Java or their files are missing, or when the
    Java process fails or does not answer within ``meteor_timeout`` seconds (per answer)
    / ``spice_timeout`` seconds (whole run). ``nltk_cross_check`` adds nltk's
    ``corpus_bleu`` values to ``.cross_checks`` (it costs about as much as CIDEr-D on large corpora).
    """
    if isinstance(tokenizer, str):
        tokenizer = resolve_tokenizer(tokenizer)[0]
    corpus = tokenize_corpus(predictions, references, tokenizer)
    scores = score_tokenized(
        corpus, metrics, meteor_timeout=meteor_timeout, spice_timeout=spice_timeout, nltk_cross_check=nltk_cross_check
    )
    scores.tokenizer = (
        tokenizer if isinstance(tokenizer, str) else ("ours" if tokenizer is tokenize else tokenizer.__name__)
    )
    return scores
