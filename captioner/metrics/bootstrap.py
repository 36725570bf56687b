"""Bootstrap confidence intervals and paired-bootstrap comparisons of corpus metrics.

A resample draws N images with replacement from the N scored images and recomputes
every corpus metric on it. Nothing is re-scored: each image's statistics are kept once
(:class:`ImageStats`), a resample is a vector of counts (how often each image was drawn),
and every corpus value of R resamples is a matrix product ``counts @ stats``:

* BLEU-1..4: coco's corpus BLEU is a function of the summed clipped matches, n-gram
  counts and lengths, so the resampled BLEU is exactly the BLEU of the resampled corpus.
* CIDEr-D, ROUGE-L, scene accuracy, SPICE: the corpus value is the mean of the per-image
  values (SPICE: of those that are numbers). CIDEr-D keeps the IDF of the full test set;
  recomputing it on a resample would count a drawn-twice image's references twice.
* METEOR: its corpus value is METEOR's own aggregate, not the mean of the per-image
  scores; the resampled means are shifted by (corpus value - mean) so the distribution
  is centred where the reported value is.

:func:`intervals` gives percentile intervals; :func:`paired_bootstrap` resamples two
systems' statistics with the same counts (the same images) and gives the difference, its
interval and a two-sided p-value for "no difference" (the share of resampled differences,
shifted to centre on 0, at least as far from 0 as the observed one; Koehn 2004).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from captioner.metrics.bleu import COCO_SMALL, COCO_TINY, BleuStats

if TYPE_CHECKING:
    from captioner.metrics.score import CaptionScores

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95
CHUNK = 200  # resamples per matrix product (bounds memory: CHUNK x N floats)


@dataclass
class ImageStats:
    """Per-image statistics of one system on N images, in a fixed image order."""

    n: int
    bleu: np.ndarray | None = None  # (N, 10): test_len, ref_len, correct[1..4], guess[1..4]
    means: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (N,) per-image values
    shift: dict[str, float] = field(default_factory=dict)  # metric -> corpus value - mean of per-image

    @classmethod
    def build(
        cls,
        n: int,
        bleu_stats: Sequence[BleuStats] = (),
        per_image: Mapping[str, Sequence[float]] | None = None,
        corpus: Mapping[str, float] | None = None,
    ) -> ImageStats:
        """From BLEU counts and per-image values (NaN allowed: left out of the mean).

        ``corpus`` gives the reported value of a mean-type metric whose corpus value is
        not the plain mean of its per-image values (METEOR); it sets the shift.
        """
        out = cls(n=n)
        if bleu_stats:
            if len(bleu_stats) != n:
                raise ValueError(f"{len(bleu_stats)} BLEU statistics for {n} images")
            out.bleu = np.array(
                [[s.test_len, s.ref_len, *s.correct, *s.guess] for s in bleu_stats], dtype=np.float64
            )  # (N, 10)
        for name, values in (per_image or {}).items():
            if name.startswith("bleu_"):
                continue  # resampled from the counts
            v = np.asarray(values, dtype=np.float64)  # (N,)
            if v.shape != (n,):
                raise ValueError(f"{name}: {v.shape[0]} per-image values for {n} images")
            out.means[name] = v
            if corpus is not None and name in corpus and np.isfinite(v).any():
                out.shift[name] = float(corpus[name]) - float(np.nanmean(v))
        return out

    @classmethod
    def from_scores(cls, scores: CaptionScores, extra: Mapping[str, Sequence[float]] | None = None) -> ImageStats:
        """From :func:`captioner.metrics.score_captions`' result (plus ``extra`` per-image metrics, in ``ids`` order)."""
        per_image: dict[str, Sequence[float]] = {m: [v[i] for i in scores.ids] for m, v in scores.per_image.items()}
        per_image.update(extra or {})
        return cls.build(len(scores.ids), scores.bleu_stats, per_image, scores.metrics)

    def names(self) -> list[str]:
        """The metrics these statistics resample."""
        return ([f"bleu_{k}" for k in range(1, 5)] if self.bleu is not None else []) + list(self.means)


def _bleu_from_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """coco's corpus BLEU-1..4 of each row of summed counts. ``sums``: (R, 10)."""
    test_len, ref_len = sums[:, 0], sums[:, 1]  # (R,)
    correct, guess = sums[:, 2:6], sums[:, 6:10]  # (R, 4)
    log_p = np.log((correct + COCO_TINY) / (guess + COCO_SMALL))  # (R, 4)
    ratio = (test_len + COCO_TINY) / (ref_len + COCO_SMALL)  # (R,)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, 1e-300)), 1.0)  # (R,)
    cum = np.cumsum(log_p, axis=1)  # (R, 4)
    return {f"bleu_{k + 1}": brevity * np.exp(cum[:, k] / (k + 1)) for k in range(4)}


def corpus_values(stats: ImageStats, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every corpus metric of each resample. ``counts``: (R, N) draws per image -> {metric: (R,)}."""
    out: dict[str, np.ndarray] = {}
    if stats.bleu is not None:
        out.update(_bleu_from_sums(counts @ stats.bleu))  # (R, 10)
    for name, v in stats.means.items():
        finite = np.isfinite(v)  # (N,)
        total = counts @ np.where(finite, v, 0.0)  # (R,)
        drawn = counts @ finite.astype(np.float64)  # (R,)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = total / drawn + stats.shift.get(name, 0.0)
    return out


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of (r, N) count matrices: row j says how often each image is in resample j."""
    if n < 1 or resamples < 1:
        raise ValueError("need at least one image and one resample")
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        r = min(CHUNK, resamples - done)
        draws = rng.integers(0, n, size=(r, n))  # (r, N) image indices
        flat = (draws + n * np.arange(r)[:, None]).ravel()
        yield np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)  # (r, N)
        done += r


def _resampled(systems: Sequence[ImageStats], resamples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Each system's resampled corpus values, all systems drawn with the same counts."""
    n = systems[0].n
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in systems]
    for counts in resample_counts(n, resamples, seed):
        for part, stats in zip(parts, systems):
            part.append(corpus_values(stats, counts))
    return [{name: np.concatenate([p[name] for p in part]) for name in part[0]} for part in parts]


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def intervals(
    stats: ImageStats, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = LEVEL
) -> dict[str, tuple[float, float]]:
    """``{metric: (low, high)}``: the percentile bootstrap interval of every metric in ``stats``."""
    values = _resampled([stats], resamples, seed)[0]
    return {name: _interval(v, level) for name, v in values.items()}


@dataclass
class Difference:
    """System A minus system B on one metric, over the same images."""

    a: float
    b: float
    difference: float
    interval: tuple[float, float]
    p_value: float


def paired_bootstrap(
    a: ImageStats,
    b: ImageStats,
    corpus_a: Mapping[str, float],
    corpus_b: Mapping[str, float],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = LEVEL,
) -> dict[str, Difference]:
    """Paired bootstrap of A - B for every metric both have (same images, same order)."""
    if a.n != b.n:
        raise ValueError(f"the two systems are scored on {a.n} and {b.n} images; pair them first")
    va, vb = _resampled([a, b], resamples, seed)
    out = {}
    for name in va:
        if name not in vb or name not in corpus_a or name not in corpus_b:
            continue
        observed = float(corpus_a[name]) - float(corpus_b[name])
        deltas = va[name] - vb[name]  # (R,)
        deltas = deltas[np.isfinite(deltas)]
        extreme = int(np.count_nonzero(np.abs(deltas - observed) >= abs(observed)))
        p = (1 + extreme) / (1 + deltas.size)
        out[name] = Difference(float(corpus_a[name]), float(corpus_b[name]), observed, _interval(deltas, level), p)
    return out
