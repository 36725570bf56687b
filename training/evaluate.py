"""Evaluate captions against references: a trained model on a dataset split, or any
system's predictions.

    captioner evaluate --checkpoint runs/scenes/best --data data/scenes --split test --out report.json
    captioner evaluate --predictions results.json --references annotations/captions_val2014.json

Two ways in, one way out:

* **model mode** (:func:`caption_split`): the split's images go through the same batched,
  pipelined path as folder captioning (:func:`captioner.pipeline.caption_stream`);
  unreadable images are reported and left out of the scores.
* **predictions mode** (:func:`load_predictions` + :func:`match_predictions`, in
  :mod:`.eval_predictions`): captions from any system (COCO results JSON, our JSONL or
  CSV), each matched to a reference image by id or by file path.

References come from any dataset format ``captioner.training.datasets.load_dataset`` reads.
:func:`evaluate_captions` scores with :func:`captioner.metrics.score_captions` (BLEU-1..4,
CIDEr-D, ROUGE-L, METEOR and SPICE when Java can run them) plus scene accuracy when the
references are a built-in scenes dataset (its ``scenes_<split>.json`` ground truth), on
the tokens of coco-caption's PTB tokenizer when Java is there (``tokenizer``), with a
bootstrap interval for every corpus metric (``bootstrap`` resamples of the images), and
builds the report: metrics, intervals, every image with its caption, references and
scores, and the worst examples by CIDEr-D. :mod:`.eval_report` renders it (terminal
table, JSON, HTML); :mod:`.eval_compare` compares two systems on the same images.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.metrics import DEFAULT_METRICS, CaptionScores, score_captions
from captioner.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL, ImageStats, intervals
from captioner.metrics.scene import SceneTruth, find_scene_truth, scene_accuracy
from captioner.metrics.tokenize import TOKENIZER_DESCRIPTIONS, has_unspaced, resolve_tokenizer

from .datasets import CaptionDataset, CaptionedImage, load_dataset
from .eval_predictions import (
    SHOWN,
    Matched,
    Prediction,
    image_root,
    load_predictions,
    match_predictions,
    no_match_message,
)
from .eval_predictions import _examples as _examples
from .eval_report import format_table, write_report

__all__ = [
    "Matched",
    "Prediction",
    "caption_split",
    "evaluate_captions",
    "evaluate_model",
    "evaluate_predictions",
    "format_table",
    "load_predictions",
    "load_references",
    "match_predictions",
    "score_pairs",
    "write_report",
]

REPORT_FORMAT = "captioner-evaluation/1"
WORST_K = 10


# ---------------------------------------------------------------------------- model mode
@dataclass
class CaptionedSplit:
    """A model's captions for a dataset split."""

    pairs: list[tuple[CaptionedImage, str]]
    failed: list[tuple[CaptionedImage, str]]  # (image, reason)
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.pairs) / self.seconds if self.seconds > 0 else 0.0


def caption_split(
    model,
    dataset: CaptionDataset,
    *,
    batch_size: int = 32,
    workers: int = 2,
    beam_size: int = 1,
    max_length: int | None = None,
    length_penalty: float = 0.0,
    progress: bool | None = None,
) -> CaptionedSplit:
    """Caption every image of ``dataset`` with ``model`` (a :class:`captioner.Captioner`),
    batched and pipelined; images that cannot be read are returned in ``failed``."""
    from tqdm import tqdm

    from captioner.options import CaptionOptions
    from captioner.pipeline import ImageItem, caption_stream

    items = [ImageItem(str(i), Path(item.image_path)) for i, item in enumerate(dataset.items)]
    pairs: list[tuple[CaptionedImage, str]] = []
    failed: list[tuple[CaptionedImage, str]] = []
    start = time.perf_counter()
    stream = caption_stream(
        model,
        items,
        batch_size=batch_size,
        workers=workers,
        options=CaptionOptions(beam_size, max_length, length_penalty),
    )
    bar = tqdm(
        total=len(items),
        unit="img",
        desc="captioning",
        disable=None if progress is None else not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for image, result, reason in stream:
            item = dataset.items[int(image.key)]
            if result is None:
                failed.append((item, reason or "unknown error"))
            else:
                pairs.append((item, result.caption))
            bar.update(1)
    finally:
        bar.close()
    return CaptionedSplit(pairs=pairs, failed=failed, seconds=time.perf_counter() - start)


# ---------------------------------------------------------------------------- scoring
def _clean(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _relative_name(item: CaptionedImage, dataset: CaptionDataset) -> str:
    base = dataset.images_dir if dataset.images_dir is not None else Path(dataset.source).parent
    try:
        return Path(os.path.relpath(item.image_path, base)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(item.image_path).as_posix()


def _scene_truths(dataset: CaptionDataset, splits: set[str]) -> dict[str, SceneTruth]:
    """The scenes ground truth of each split, when the references are a scenes dataset."""
    folder = Path(dataset.source)
    folder = folder if folder.is_dir() else folder.parent
    truths = {}
    for split in sorted(splits):
        path = find_scene_truth(folder, split)
        if path is not None:
            truths[split] = SceneTruth.load(path)
    return truths


@dataclass
class ScoredPairs:
    """One system's scores on a list of ``(reference image, caption)`` pairs."""

    pairs: list[tuple[CaptionedImage, str]]
    ids: list[Hashable]  # report id of each pair: the dataset's id, or the file name when ids repeat
    scores: CaptionScores
    tokenizer: str  # "ptb" or "ours"
    notes: list[str] = field(default_factory=list)
    scene_checks: dict[Hashable, tuple[bool, list[str]]] = field(default_factory=dict)
    scene_errors: Counter = field(default_factory=Counter)

    def metrics(self) -> dict[str, float]:
        """Corpus values, scene accuracy included when it was scored."""
        out = dict(self.scores.metrics)
        if self.scene_checks:
            out["scene_accuracy"] = sum(ok for ok, _ in self.scene_checks.values()) / len(self.ids)
        return out

    def image_stats(self) -> ImageStats:
        """Per-image statistics for the bootstrap (see :mod:`captioner.metrics.bootstrap`)."""
        extra = {}
        if self.scene_checks:
            extra["scene_accuracy"] = [float(self.scene_checks[i][0]) for i in self.ids]
        return ImageStats.from_scores(self.scores, extra)


def score_pairs(
    pairs: Sequence[tuple[CaptionedImage, str]],
    dataset: CaptionDataset,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    scene: bool = True,
    tokenizer: str = "auto",
) -> ScoredPairs:
    """Score ``(reference image, predicted caption)`` pairs (see :func:`evaluate_captions`)."""
    if not pairs:
        raise CaptionerError("there are no captions to score (no prediction matched a reference image)")
    name, note = resolve_tokenizer(tokenizer)
    ids: list[Hashable] = [item.image_id for item, _ in pairs]
    if len(set(ids)) != len(ids):
        ids = [_relative_name(item, dataset) for item, _ in pairs]
    predictions = {i: caption for i, (_, caption) in zip(ids, pairs)}
    references = {i: item.captions for i, (item, _) in zip(ids, pairs)}
    scores = score_captions(predictions, references, metrics=metrics, tokenizer=name)
    out = ScoredPairs(list(pairs), ids, scores, name, notes=[note] if note else [])
    if scene:
        truths = _scene_truths(dataset, {item.split for item, _ in pairs})
        if truths and all(item.split in truths for item, _ in pairs):
            for split, truth in truths.items():  # captioner.metrics.scene scores, per split
                mine = [(i, item, caption) for i, (item, caption) in zip(ids, pairs) if item.split == split]
                keys = {i: i if truth.get(i) else _relative_name(item, dataset) for i, item, _ in mine}
                acc = scene_accuracy({keys[i]: caption for i, _, caption in mine}, truth, keep_wrong=len(mine))
                wrong = {key: details for key, _, details in acc.wrong}
                for i, _, _ in mine:
                    out.scene_checks[i] = (keys[i] not in wrong, wrong.get(keys[i], []))
                out.scene_errors.update(acc.reasons)
    return out


def evaluate_captions(
    pairs: Sequence[tuple[CaptionedImage, str]],
    dataset: CaptionDataset,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    worst_k: int = WORST_K,
    scene: bool = True,
    tokenizer: str = "auto",
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Score ``(reference image, predicted caption)`` pairs and build the report dict.

    Image ids are the dataset's own ids when they are unique among the pairs, else the
    image file names. Scene accuracy is added when ``scene`` is true and the dataset
    folder holds ``scenes_<split>.json`` for every split among the pairs. ``tokenizer``
    is ``"auto"`` (coco-caption's PTB tokenizer when Java is there, else ours, with a
    note), ``"ptb"`` or ``"ours"``. ``bootstrap`` resamples (0: none) give a 95 % interval
    for every corpus metric, reproducible with ``seed``.
    """
    scored = score_pairs(pairs, dataset, metrics=metrics, scene=scene, tokenizer=tokenizer)
    scores, ids = scored.scores, scored.ids
    report: dict = {
        "format": REPORT_FORMAT,
        "images": len(pairs),
        "tokenizer": {
            "name": scored.tokenizer,
            "description": TOKENIZER_DESCRIPTIONS[scored.tokenizer],
            # "characters" when captions are (partly) Chinese or Japanese: n-grams of characters there
            "units": "characters" if has_unspaced(t for item, c in pairs for t in (c, *item.captions)) else "words",
        },
        "metrics": {k: _clean(v) for k, v in scored.metrics().items()},
        "skipped": dict(scores.skipped),
        "cross_checks": {k: _clean(v) for k, v in scores.cross_checks.items()},
        "notes": list(scored.notes),
    }
    if scored.scene_checks:
        correct = sum(ok for ok, _ in scored.scene_checks.values())
        report["scene"] = {"correct": correct, "total": len(pairs), "errors": dict(scored.scene_errors.most_common())}
    if bootstrap > 0:
        start = time.perf_counter()
        found = intervals(scored.image_stats(), bootstrap, seed, LEVEL)
        report["intervals"] = {k: [_clean(lo), _clean(hi)] for k, (lo, hi) in found.items()}
        report["bootstrap"] = {
            "resamples": bootstrap,
            "seed": seed,
            "level": LEVEL,
            "seconds": round(time.perf_counter() - start, 3),
        }

    rows = []
    for i, (item, caption) in zip(ids, pairs):
        row = {
            "image_id": i,
            "file": _relative_name(item, dataset),
            "caption": caption,
            "references": list(item.captions),
            "scores": {m: _clean(s[i]) for m, s in scores.per_image.items()},
        }
        if i in scored.scene_checks:
            row["scene_correct"], row["scene_errors"] = scored.scene_checks[i]
        rows.append(row)
    rank_by = "cider_d" if "cider_d" in scores.per_image else next(iter(scores.per_image), None)
    if rank_by is not None:
        by_id = {row["image_id"]: row for row in rows}
        report["worst_by"] = rank_by
        report["worst"] = [by_id[i] for i, _ in scores.worst(rank_by, worst_k)]
    report["per_image"] = rows
    return report


# ---------------------------------------------------------------------------- the two modes
def load_references(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    images_dir: str | os.PathLike | None = None,
    split: str | None = None,
    check_files: bool = True,
) -> CaptionDataset:
    """The reference captions, from any supported dataset format (one split, or all)."""
    images = Path(images_dir) if images_dir is not None else None
    return load_dataset(Path(path), format=format, images_dir=images, split=split, check_files=check_files)


def match_notes(preds: Sequence[Prediction], matched: Matched, references: CaptionDataset) -> list[str]:
    """The warnings of a match, or :class:`CaptionerError` when nothing matched."""
    if not matched.pairs:
        raise CaptionerError(no_match_message(preds, matched, references))
    notes = []
    if matched.folder is not None:
        root = image_root(references)
        folder = Path(os.path.relpath(matched.folder, root)).as_posix()
        notes.append(
            f"note: {matched.settled} prediction(s) name files that several folders share; matched them in "
            f"{folder!r} of {root}, the folder holding all the predicted files (pass --split to choose)"
        )
    if matched.ambiguous:
        notes.append(
            f"warning: {len(matched.ambiguous)} prediction(s) name a file that several reference images "
            f"share, left out (pick one split with --split, or give longer paths): "
            f"{_examples(matched.ambiguous)}"
        )
    if matched.unmatched:
        notes.append(
            f"warning: {len(matched.unmatched)} of {len(preds)} prediction(s) match no reference image: "
            f"{_examples(matched.unmatched)}; left out"
        )
    if matched.duplicates:
        notes.append(
            f"warning: {len(matched.duplicates)} image(s) have more than one prediction; the first "
            f"was scored: {_examples(matched.duplicates)}"
        )
    if matched.without_prediction:
        notes.append(f"note: {matched.without_prediction} reference image(s) have no prediction and are not scored")
    return notes


def evaluate_predictions(
    predictions_path: str | os.PathLike,
    references: CaptionDataset,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    worst_k: int = WORST_K,
    tokenizer: str = "auto",
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Predictions mode: read, match and score a predictions file."""
    preds = load_predictions(predictions_path)
    matched = match_predictions(preds, references)
    notes = match_notes(preds, matched, references)
    report = evaluate_captions(
        matched.pairs, references, metrics=metrics, worst_k=worst_k, tokenizer=tokenizer, bootstrap=bootstrap, seed=seed
    )
    report["notes"] = notes + report["notes"]
    report["source"] = {
        "mode": "predictions",
        "predictions": str(predictions_path),
        "references": str(references.source),
        "format": references.format,
        "splits": references.splits,
    }
    report["unmatched"] = [{"key": p.key, "where": p.where} for p in matched.unmatched + matched.ambiguous]
    return report


def model_notes(run: CaptionedSplit, dataset: CaptionDataset) -> list[str]:
    """Missing and unreadable images of a model run."""
    notes = []
    if dataset.report.missing_files:
        notes.append(
            f"warning: {dataset.report.missing_files} image file(s) of the references are missing and "
            f"were not captioned, e.g. {', '.join(dataset.report.missing_examples[:SHOWN])}"
        )
    if run.failed:
        shown = ", ".join(f"{_relative_name(i, dataset)} ({r})" for i, r in run.failed[:SHOWN])
        notes.append(f"warning: {len(run.failed)} image(s) could not be read and are not scored: {shown}")
    return notes


def evaluate_model(
    model,
    dataset: CaptionDataset,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    batch_size: int = 32,
    workers: int = 2,
    beam_size: int = 1,
    max_length: int | None = None,
    length_penalty: float = 0.0,
    worst_k: int = WORST_K,
    progress: bool | None = None,
    tokenizer: str = "auto",
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Model mode: caption ``dataset`` with ``model`` and score the captions."""
    if len(dataset) == 0:
        raise CaptionerError(
            f"{dataset.source}: no images to caption (are the image files there? point to them with --images DIR)"
        )
    run = caption_split(
        model,
        dataset,
        batch_size=batch_size,
        workers=workers,
        beam_size=beam_size,
        max_length=max_length,
        length_penalty=length_penalty,
        progress=progress,
    )
    report = evaluate_captions(
        run.pairs, dataset, metrics=metrics, worst_k=worst_k, tokenizer=tokenizer, bootstrap=bootstrap, seed=seed
    )
    report["notes"] = model_notes(run, dataset) + report["notes"]
    report["source"] = model_source(model, dataset)
    report["generation"] = {"beam_size": beam_size, "max_length": max_length, "length_penalty": length_penalty}
    report["speed"] = {
        "images": len(run.pairs),
        "seconds": round(run.seconds, 3),
        "images_per_second": round(run.images_per_second, 2),
    }
    report["failed"] = [{"file": _relative_name(i, dataset), "reason": r} for i, r in run.failed]
    return report


def model_source(model, dataset: CaptionDataset) -> dict:
    """The ``source`` entry of a model-mode report."""
    return {
        "mode": "model",
        "model_id": model.model_id,
        "checkpoint": str(model.path) if model.path else None,
        "data": str(dataset.source),
        "format": dataset.format,
        "splits": dataset.splits,
    }
