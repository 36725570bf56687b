"""Fitting a checkpoint's trust statistics: confidence calibration and the domain model.

    captioner calibrate --checkpoint runs/scenes/best --data data/scenes

1. Encode up to ``train_images`` training images (evenly spread over the split) and
   summarise their pooled features (:class:`captioner.trust.DomainModel`).
2. Encode the held-out images (the validation split), set the out-of-domain threshold at a
   high quantile of their distances, caption them exactly as the model will serve (greedy,
   the default no-repeat rule) and fit the confidence calibration against whether each
   caption was right: scene-correct for a built-in scenes dataset, else an exact match of
   one of the references (after tokenising).
3. Write ``trust.json`` and ``trust.safetensors`` into the checkpoint folder.

Training calls :func:`trust_after_training` with the features it already cached and its
validation split; it writes the statistics into the checkpoint it keeps.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from captioner.errors import CaptionerError
from captioner.metrics.scene import SceneTruth, check_caption, find_scene_truth
from captioner.trust import (
    DEFAULT_QUANTILE,
    DEFAULT_RANK,
    DEFAULT_STATISTIC,
    Calibration,
    DomainModel,
    TrustStats,
    caption_statistic,
    pooled,
    save_trust,
)
from captioner.vocab import tokenize

from .datasets import CaptionDataset, CaptionedImage, load_dataset

log = logging.getLogger(__name__)

DEFAULT_TRAIN_IMAGES = 2000
SCENES_SENTENCE = (
    "emoji scenes: one to three of each of one or two kinds of 40 everyday objects (Noto Color Emoji "
    "sprites) on a plain coloured background, rendered by `captioner data scenes`"
)


def trained_on(metadata: dict) -> str:
    """One sentence for people: what the model's training images were, from its metadata."""
    data = metadata.get("dataset") or {}
    train = (data.get("splits") or {}).get("train")
    count = f" ({train:,} training images)" if isinstance(train, int) else ""
    generator = data.get("generator") or {}
    if isinstance(generator, dict) and generator.get("generator") == "captioner-scenes":
        return SCENES_SENTENCE + count
    if data.get("path"):
        return f"images of the {data.get('format', 'caption')} dataset {Path(str(data['path'])).name}{count}"
    return ""


def encode_paths(model, paths: Sequence[str | os.PathLike], batch_size: int = 32) -> np.ndarray:
    """Features (N, F) or maps (N, L, F) of image files, through the model's own image path."""
    rows = []
    for i in range(0, len(paths), batch_size):
        batch = np.stack([model.preprocess(p) for p in paths[i : i + batch_size]])  # (B, 3, H, W)
        rows.append(model.encode(batch))  # (B, F)
    if not rows:
        raise CaptionerError("no images to encode")
    return np.concatenate(rows)  # (N, F)


def correctness(dataset: CaptionDataset, items: Sequence[CaptionedImage]) -> tuple[Callable[[int, str], bool], str]:
    """A judge ``(item index, caption) -> right?`` and what "right" means for this dataset."""
    folder = Path(dataset.source)
    folder = folder if folder.is_dir() else folder.parent
    splits = {item.split for item in items}
    truths = {s: find_scene_truth(folder, s) for s in splits}
    if truths and all(p is not None for p in truths.values()):
        loaded = {s: SceneTruth.load(p) for s, p in truths.items() if p is not None}

        def scene_right(i: int, caption: str) -> bool:
            item = items[i]
            truth = loaded[item.split]
            image = truth.get(item.image_id) or truth.get(str(item.image_path))
            if image is None:
                raise CaptionerError(f"{item.image_path}: not in the scenes ground truth {truth.source}")
            return check_caption(caption, image, truth.words).correct

        return scene_right, "scene_correct"
    refs = [{tuple(tokenize(c)) for c in item.captions} for item in items]
    return (lambda i, caption: tuple(tokenize(caption)) in refs[i]), "exact_match"


def judge_split(split) -> tuple[Callable[[int, str], bool], str]:
    """Like :func:`correctness` for training's split data (``paths``, ``captions``, ``ids``
    and, for scenes, ``truth``: :class:`captioner.training.splits.SplitData`)."""
    truth: SceneTruth | None = getattr(split, "truth", None)
    if truth is not None:
        scenes = truth

        def scene_right(i: int, caption: str) -> bool:
            image = scenes.get(split.ids[i]) or scenes.get(str(split.paths[i]))
            if image is None:
                raise CaptionerError(f"{split.paths[i]}: not in the scenes ground truth {scenes.source}")
            return check_caption(caption, image, scenes.words).correct

        return scene_right, "scene_correct"
    refs = [{tuple(tokenize(c)) for c in caps} for caps in split.captions]
    return (lambda i, caption: tuple(tokenize(caption)) in refs[i]), "exact_match"


def trust_step(
    checkpoint: Path, best_model: Callable | None, features: dict[str, Tensor], val_split, log: Callable[[str], None]
) -> None:
    """Training's trust step: :func:`trust_after_training` on the run's cached train and val
    features, with one log line saying what was fitted (or why nothing was). ``best_model``
    gives the kept model; None when the run has no cached features (fine-tuning)."""
    if best_model is None:
        log(
            "no confidence calibration or domain statistics: they need cached features (add them "
            "later with `captioner calibrate`)"
        )
        return
    try:
        trust = trust_after_training(checkpoint, best_model(), features["train"], features["val"], val_split)
    except (ValueError, CaptionerError) as e:  # e.g. too few validation images
        log(f"no confidence calibration or domain statistics: {e}")
        return
    assert trust.domain is not None and trust.calibration is not None
    log(
        f"trust statistics: out of domain past distance {trust.domain.threshold:.3f}; confidence "
        f"calibrated on {trust.calibration.captions} val captions ({trust.calibration.accuracy:.1%} right)"
    )


def trust_after_training(
    checkpoint: str | os.PathLike,
    model,
    train_features: Tensor,
    val_features: Tensor,
    val_split,
    *,
    train_images: int | None = 10_000,
    quantile: float = DEFAULT_QUANTILE,
    rank: int = DEFAULT_RANK,
) -> TrustStats:
    """Training's last step: fit both statistics from the cached features of the training
    split (N, F; at most ``train_images`` rows, evenly spread) and of the validation split
    (M, F) with its references, and write them into ``checkpoint`` (the kept model's folder).
    ``model`` is a :class:`captioner.model.ReferenceCaptioner` with the kept decoder."""
    n = train_features.size(0)
    rows = spread(list(range(n)), train_images)
    judge, target = judge_split(val_split)
    metadata_path = Path(checkpoint) / "metadata.json"
    metadata = json.loads(metadata_path.read_text(encoding="utf-8")) if metadata_path.exists() else {}
    trust = fit_trust(
        model,
        pooled(train_features[rows].float().cpu().numpy()),  # (N, F): the domain model needs only the pooled features
        val_features.float().cpu().numpy(),  # the decoder's input
        judge,
        target=target,
        trained_on_text=trained_on(metadata),
        quantile=quantile,
        rank=rank,
    )
    save_trust(checkpoint, trust)
    return trust


def calibrate(
    model,
    features: np.ndarray,
    judge: Callable[[int, str], bool],
    *,
    target: str,
    statistic: str = DEFAULT_STATISTIC,
    method: str = "platt",
    batch_size: int = 100,
) -> tuple[Calibration, np.ndarray, np.ndarray]:
    """Caption held-out features (N, F) as served, judge each caption, fit the calibration.
    Returns (calibration, statistics (N,), right (N,) as 0/1)."""
    stats: list[float] = []
    right: list[float] = []
    for i in range(0, len(features), batch_size):
        chunk = features[i : i + batch_size]  # (b, F)
        for j, r in enumerate(model.generate(chunk, min_word_prob=0.0)):  # each word's log-prob, as generated
            stats.append(caption_statistic(np.asarray(r.logprobs), statistic))
            right.append(float(judge(i + j, r.caption)))
    s, c = np.array(stats), np.array(right)
    from captioner.runtime.search import DEFAULT_NO_REPEAT_NGRAM

    decoding = {"beam_size": 1, "no_repeat_ngram_size": DEFAULT_NO_REPEAT_NGRAM}
    cal = Calibration.fit(s, c, statistic, method, target=target, decoding=decoding)
    return cal, s, c


def fit_trust(
    model,
    train_features: np.ndarray,
    held_out_features: np.ndarray,
    judge: Callable[[int, str], bool],
    *,
    target: str,
    trained_on_text: str = "",
    quantile: float = DEFAULT_QUANTILE,
    rank: int = DEFAULT_RANK,
    statistic: str = DEFAULT_STATISTIC,
) -> TrustStats:
    """Both statistics from features already computed: training (N, F) and held-out (M, F)
    with ``judge(i, caption)`` telling whether a caption of held-out image i is right."""
    domain = DomainModel.fit(train_features, rank=rank)
    domain.set_threshold(held_out_features, quantile)
    calibration, _, _ = calibrate(model, held_out_features, judge, target=target, statistic=statistic)
    return TrustStats(calibration=calibration, domain=domain, trained_on=trained_on_text)


def spread(items: Sequence, limit: int | None) -> list:
    """At most ``limit`` items, evenly spread over the sequence (all of them for None)."""
    if limit is None or len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, int(limit)).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]


def calibrate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    *,
    format: str = "auto",
    images_dir: str | os.PathLike | None = None,
    held_out: Sequence[str] = ("val",),
    train_images: int | None = DEFAULT_TRAIN_IMAGES,
    quantile: float = DEFAULT_QUANTILE,
    rank: int = DEFAULT_RANK,
    statistic: str = DEFAULT_STATISTIC,
    method: str = "platt",
    device: str | None = None,
    write: bool = True,
) -> tuple[TrustStats, np.ndarray, np.ndarray]:
    """Fit and (``write=True``) store the trust statistics of a checkpoint from its dataset.
    Returns (statistics, held-out confidences, held-out 0/1 right) for reports and plots."""
    from captioner.runtime.captioner import load_captioner

    model = load_captioner(checkpoint, device=device)
    dataset = load_dataset(Path(data), format, images_dir=None if images_dir is None else Path(images_dir))
    train = spread([i for i in dataset.items if i.split == "train"], train_images)
    held = [i for i in dataset.items if i.split in set(held_out)]
    if len(train) < 2:
        raise CaptionerError(f"{data}: the domain model needs training images; found {len(train)}")
    if len(held) < 20:
        raise CaptionerError(
            f"{data}: calibration needs at least 20 held-out images in split(s) {', '.join(held_out)}; found {len(held)}"
        )
    log.info("encoding %d training and %d held-out images", len(train), len(held))
    train_f = encode_paths(model, [i.image_path for i in train])  # (N, F)
    held_f = encode_paths(model, [i.image_path for i in held])  # (M, F)
    judge, target = correctness(dataset, held)
    domain = DomainModel.fit(train_f, rank=rank)
    domain.set_threshold(held_f, quantile)
    calibration, stats, right = calibrate(model, held_f, judge, target=target, statistic=statistic, method=method)
    trust = TrustStats(calibration=calibration, domain=domain, trained_on=trained_on(model.metadata))
    if write:
        save_trust(checkpoint, trust)
    return trust, calibration.confidence(stats), right


def reliability_bins(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> list[dict]:
    """Per equal-width confidence bin: captions, mean confidence and rate of being right."""
    confidence, right = np.asarray(confidence, float), np.asarray(right, float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "captions": int(mask.sum()),
                    "confidence": float(confidence[mask].mean()),
                    "right": float(right[mask].mean()),
                }
            )
    return rows


def plot_reliability(confidence: np.ndarray, right: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """A reliability diagram (PNG): rate of being right against confidence, per decile bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = reliability_bins(confidence, right)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfect calibration")
    ax.bar([r["low"] + 0.05 for r in rows], [r["right"] for r in rows], width=0.09, alpha=0.6, label="captions right")
    ax.plot([r["confidence"] for r in rows], [r["right"] for r in rows], "o-", color="C3", label="bin mean")
    ax.set_ylabel("fraction of captions right")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "Reliability of the confidence")
    hist.bar([r["low"] + 0.05 for r in rows], [r["captions"] for r in rows], width=0.09, color="0.5")
    hist.set_xlabel("confidence")
    hist.set_ylabel("captions")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
