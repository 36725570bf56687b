"""Evaluate captions against references: a trained model on a dataset split, or any
system's predictions.

    captioner evaluate --checkpoint runs/scenes/best --data data/scenes --split test --out report.json
    captioner evaluate --predictions results.json --references annotations/captions_val2014.json

Two ways in, one way out:

* **model mode** (:func:`caption_split`): the split's images go through the same batched,
  pipelined path as folder captioning (:func:`captioner.pipeline.caption_stream`);
  unreadable images are reported and left out of the scores.
* **predictions mode** (:func:`load_predictions` + :func:`match_predictions`): captions
  from any system, in the COCO results format (``[{"image_id": 42, "caption": "..."}]``),
  our JSONL (``{"file": "dog.jpg", "caption": "..."}`` per line, as ``captioner caption
  DIR --out`` writes it) or our CSV. A prediction is matched to a reference image by its
  id (COCO id, Karpathy id, Flickr file name), else by the longest unambiguous tail of its
  file path, so predictions made from the image folder match whatever folder the
  references name.

References come from any dataset format ``captioner.training.datasets.load_dataset`` reads.
:func:`evaluate_captions` scores with :func:`captioner.metrics.score_captions` (BLEU-1..4,
CIDEr-D, ROUGE-L, METEOR and SPICE when Java can run them) plus scene accuracy when the
references are a built-in scenes dataset (its ``scenes_<split>.json`` ground truth), and
builds the report: metrics, every image with its caption, references and scores, and the
worst examples by CIDEr-D. :func:`format_table` renders it for the terminal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.metrics import DEFAULT_METRICS, METRIC_LABELS, score_captions
from captioner.metrics.scene import SceneTruth, check_caption, find_scene_truth

from .datasets import CaptionDataset, CaptionedImage, load_dataset

REPORT_FORMAT = "captioner-evaluation/1"
WORST_K = 10
SHOWN = 5  # unmatched / failed examples named in messages


# ---------------------------------------------------------------------------- predictions
@dataclass
class Prediction:
    """One predicted caption: ``key`` is an image id (int or str) or a file path."""

    key: Hashable
    caption: str
    where: str  # "results.json: [3]", "captions.jsonl:12"


ID_KEYS = ("image_id", "id")
FILE_KEYS = ("file", "image", "file_name", "filename", "image_path", "path")
CAPTION_KEYS = ("caption", "text", "sentence")


def _prediction_from(row: object, where: str) -> Prediction:
    if not isinstance(row, dict):
        raise CaptionerError(f"{where}: expected an object with an image id or file and a caption")
    key = next((row[k] for k in (*ID_KEYS, *FILE_KEYS) if k in row), None)
    if isinstance(key, bool) or not isinstance(key, (int, str)) or (isinstance(key, str) and not key.strip()):
        raise CaptionerError(f"{where}: needs an image id (image_id) or a file name (file) as a number or string")
    caption = next((row[k] for k in CAPTION_KEYS if k in row), None)
    if not isinstance(caption, str):
        raise CaptionerError(f"{where}: needs a caption string under one of {list(CAPTION_KEYS)}")
    return Prediction(key, caption, where)


def load_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Read predicted captions from a COCO results JSON, a JSONL file or a CSV file.

    * ``.json``: a list of ``{"image_id", "caption"}`` objects (COCO results format), or
      one object mapping image id / file -> caption;
    * ``.csv``: a header naming a file or id column and a caption column
      (``file,caption,score`` as folder captioning writes it);
    * anything else: JSON Lines, one object per line (``{"file", "caption"}`` or
      ``{"image_id", "caption"}``).

    Raises :class:`CaptionerError` naming the file and the entry or line that is wrong.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaptionerError(f"{path}: predictions file not found") from None
    except OSError as e:
        raise CaptionerError(f"{path}: cannot read the predictions ({e.strerror or e})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CaptionerError(f"{path}:{line}: not valid UTF-8; save the predictions as UTF-8") from None
    suffix = path.suffix.lower()
    preds: list[Prediction] = []
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise CaptionerError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
        if isinstance(obj, list):
            preds = [_prediction_from(row, f"{path.name}: [{i}]") for i, row in enumerate(obj)]
        elif isinstance(obj, dict) and all(isinstance(v, str) for v in obj.values()):
            preds = [Prediction(int(k) if k.isdigit() else k, v, f"{path.name}: {k!r}") for k, v in obj.items()]
        else:
            raise CaptionerError(
                f'{path}: expected the COCO results format, a list of {{"image_id": ..., "caption": ...}} objects'
            )
    elif suffix in (".csv", ".tsv"):
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
        if not rows:
            raise CaptionerError(f"{path}: the file is empty")
        header = [h.strip().lower() for h in rows[0]]
        key_col = next((header.index(k) for k in (*ID_KEYS, *FILE_KEYS) if k in header), None)
        cap_col = next((header.index(k) for k in CAPTION_KEYS if k in header), None)
        if key_col is None or cap_col is None:
            raise CaptionerError(
                f"{path}: the first line must be a header naming a file or image_id column "
                f"and a caption column (e.g. file,caption,score), got {rows[0]}"
            )
        for n, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) <= max(key_col, cap_col):
                raise CaptionerError(f"{path}:{n}: expected {len(header)} fields, got {len(row)}")
            key: Hashable = row[key_col]
            if header[key_col] in ID_KEYS and row[key_col].isdigit():
                key = int(row[key_col])
            preds.append(Prediction(key, row[cap_col], f"{path.name}:{n}"))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CaptionerError(
                    f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); expected one "
                    'object per line such as {"file": "dog.jpg", "caption": "a dog"}'
                ) from None
            preds.append(_prediction_from(row, f"{path.name}:{n}"))
    if not preds:
        raise CaptionerError(f"{path}: no predictions in the file")
    return preds


def _path_tails(path: str) -> list[str]:
    """``"a/b/c.jpg"`` -> ``["a/b/c.jpg", "b/c.jpg", "c.jpg"]`` (longest first)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return ["/".join(parts[i:]) for i in range(len(parts))]


@dataclass
class Matched:
    """Predictions paired with reference images, and what could not be paired."""

    pairs: list[tuple[CaptionedImage, str]]  # in reference order
    unmatched: list[Prediction] = field(default_factory=list)  # no reference image found
    ambiguous: list[Prediction] = field(default_factory=list)  # a file tail shared by several images
    duplicates: list[Prediction] = field(default_factory=list)  # a second caption for one image
    without_prediction: int = 0  # reference images with no caption


def match_predictions(predictions: Sequence[Prediction], dataset: CaptionDataset) -> Matched:
    """Pair each prediction with its reference image (see the module docstring).

    Ids match first (a digit string matches an integer id); then file paths by their
    longest tail (``test/000001.jpg``, then ``000001.jpg``) that names exactly one image.
    The first caption of an image wins; later ones are listed as duplicates.
    """
    by_id: dict[Hashable, int] = {}
    for i, item in enumerate(dataset.items):
        by_id.setdefault(item.image_id, i)
        by_id.setdefault(str(item.image_id), i)
    by_tail: dict[str, int] = {}
    shared: set[str] = set()
    for i, item in enumerate(dataset.items):
        for tail in _path_tails(os.path.abspath(item.image_path)):
            if tail in by_tail and by_tail[tail] != i:
                shared.add(tail)
            by_tail.setdefault(tail, i)
    chosen: dict[int, str] = {}
    out = Matched(pairs=[])
    for p in predictions:
        index = by_id.get(p.key)
        if index is None and isinstance(p.key, str):
            index = by_id.get(int(p.key)) if p.key.isdigit() else None
            if index is None:
                for tail in _path_tails(p.key):
                    if tail in shared:
                        out.ambiguous.append(p)
                        index = -1
                        break
                    if tail in by_tail:
                        index = by_tail[tail]
                        break
        if index is None:
            out.unmatched.append(p)
        elif index >= 0:
            if index in chosen:
                out.duplicates.append(p)
            else:
                chosen[index] = p.caption
    out.pairs = [(dataset.items[i], chosen[i]) for i in sorted(chosen)]
    out.without_prediction = len(dataset.items) - len(chosen)
    return out


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


def evaluate_captions(
    pairs: Sequence[tuple[CaptionedImage, str]],
    dataset: CaptionDataset,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    worst_k: int = WORST_K,
    scene: bool = True,
) -> dict:
    """Score ``(reference image, predicted caption)`` pairs and build the report dict.

    Image ids are the dataset's own ids when they are unique among the pairs, else the
    image file names. Scene accuracy is added when ``scene`` is true and the dataset
    folder holds ``scenes_<split>.json`` for every split among the pairs.
    """
    if not pairs:
        raise CaptionerError("there are no captions to score (no prediction matched a reference image)")
    ids: list[Hashable] = [item.image_id for item, _ in pairs]
    if len(set(ids)) != len(ids):
        ids = [_relative_name(item, dataset) for item, _ in pairs]
    predictions = {i: caption for i, (_, caption) in zip(ids, pairs)}
    references = {i: item.captions for i, (item, _) in zip(ids, pairs)}
    scores = score_captions(predictions, references, metrics=metrics)

    report: dict = {
        "format": REPORT_FORMAT,
        "images": len(pairs),
        "metrics": {k: _clean(v) for k, v in scores.metrics.items()},
        "skipped": dict(scores.skipped),
        "cross_checks": {k: _clean(v) for k, v in scores.cross_checks.items()},
    }

    scene_checks: dict[Hashable, tuple[bool, list[str]]] = {}
    if scene:
        truths = _scene_truths(dataset, {item.split for item, _ in pairs})
        if truths and all(item.split in truths for item, _ in pairs):
            counts: Counter = Counter()
            correct = 0
            for i, (item, caption) in zip(ids, pairs):
                truth = truths[item.split]
                image = truth.get(item.image_id) or truth.get(_relative_name(item, dataset))
                if image is None:
                    raise CaptionerError(f"{item.image_path}: not in the scenes ground truth {truth.source}")
                check = check_caption(caption, image, truth.words)
                scene_checks[i] = (check.correct, check.details)
                correct += check.correct
                counts.update(check.reasons)
            report["metrics"]["scene_accuracy"] = correct / len(pairs)
            report["scene"] = {"correct": correct, "total": len(pairs), "errors": dict(counts.most_common())}

    rows = []
    for i, (item, caption) in zip(ids, pairs):
        row = {
            "image_id": i,
            "file": _relative_name(item, dataset),
            "caption": caption,
            "references": list(item.captions),
            "scores": {m: _clean(s[i]) for m, s in scores.per_image.items()},
        }
        if i in scene_checks:
            row["scene_correct"], row["scene_errors"] = scene_checks[i]
        rows.append(row)
    rank_by = "cider_d" if "cider_d" in scores.per_image else next(iter(scores.per_image), None)
    if rank_by is not None:
        by_id = {row["image_id"]: row for row in rows}
        report["worst_by"] = rank_by
        report["worst"] = [by_id[i] for i, _ in scores.worst(rank_by, worst_k)]
    report["per_image"] = rows
    return report


def format_table(report: dict) -> str:
    """The report's metrics as an aligned text table, then the notes worth reading."""
    lines = [f"{'metric':<16}{'value':>8}", "-" * 24]
    metrics = report.get("metrics", {})
    for name, value in metrics.items():
        label = METRIC_LABELS.get(name, name.replace("_", " "))
        if value is None:
            text = f"{'n/a':>8}"
        elif name == "scene_accuracy":
            scene = report.get("scene", {})
            text = f"{100 * value:7.1f}%  ({scene.get('correct')} of {scene.get('total')} exactly right)"
        else:
            text = f"{value:8.4f}"
        lines.append(f"{label:<16}{text}")
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"{METRIC_LABELS.get(name, name):<16}{'skipped':>8}  ({reason})")
    lines.append("")
    lines.append(f"images scored: {report.get('images')}")
    for note in report.get("notes", []):
        lines.append(note)
    worst = report.get("worst", [])[:3]
    if worst:
        label = METRIC_LABELS.get(report.get("worst_by", ""), report.get("worst_by", ""))
        lines.append(f"lowest {label}:")
        for row in worst:
            score = row["scores"].get(report["worst_by"])
            lines.append(
                f"  {row['file']}  {score if score is None else round(score, 3)}  "
                f'"{row["caption"]}"  (e.g. "{row["references"][0]}")'
            )
    return "\n".join(lines)


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write ``report`` as indented JSON through a temporary file (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


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
    return load_dataset(path, format=format, images_dir=images_dir, split=split, check_files=check_files)


def _examples(preds: Sequence[Prediction]) -> str:
    shown = ", ".join(f"{p.where} ({p.key!r})" for p in preds[:SHOWN])
    return shown + (f" and {len(preds) - SHOWN} more" if len(preds) > SHOWN else "")


def evaluate_predictions(
    predictions_path: str | os.PathLike,
    references: CaptionDataset,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    worst_k: int = WORST_K,
) -> dict:
    """Predictions mode: read, match and score a predictions file."""
    preds = load_predictions(predictions_path)
    matched = match_predictions(preds, references)
    notes = []
    if matched.ambiguous:
        notes.append(
            f"warning: {len(matched.ambiguous)} prediction(s) name a file that several reference images "
            f"share, left out (pick one split with --split, or give longer paths): "
            f"{_examples(matched.ambiguous)}"
        )
    if matched.unmatched:
        msg = (
            f"{len(matched.unmatched)} of {len(preds)} prediction(s) match no reference image: "
            f"{_examples(matched.unmatched)}"
        )
        if not matched.pairs:
            raise CaptionerError(
                msg + "; check that the predictions and the references describe the same images (and the --split)"
            )
        notes.append("warning: " + msg + "; left out")
    if matched.duplicates:
        notes.append(
            f"warning: {len(matched.duplicates)} image(s) have more than one prediction; the first "
            f"was scored: {_examples(matched.duplicates)}"
        )
    if matched.without_prediction:
        notes.append(f"note: {matched.without_prediction} reference image(s) have no prediction and are not scored")
    report = evaluate_captions(matched.pairs, references, metrics=metrics, worst_k=worst_k)
    report["notes"] = notes
    report["source"] = {
        "mode": "predictions",
        "predictions": str(predictions_path),
        "references": str(references.source),
        "format": references.format,
        "splits": references.splits,
    }
    report["unmatched"] = [{"key": p.key, "where": p.where} for p in matched.unmatched + matched.ambiguous]
    return report


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
    notes = []
    if dataset.report.missing_files:
        notes.append(
            f"warning: {dataset.report.missing_files} image file(s) of the references are missing and "
            f"were not captioned, e.g. {', '.join(dataset.report.missing_examples[:SHOWN])}"
        )
    if run.failed:
        shown = ", ".join(f"{_relative_name(i, dataset)} ({r})" for i, r in run.failed[:SHOWN])
        notes.append(f"warning: {len(run.failed)} image(s) could not be read and are not scored: {shown}")
    report = evaluate_captions(run.pairs, dataset, metrics=metrics, worst_k=worst_k)
    report["notes"] = notes
    report["source"] = {
        "mode": "model",
        "model_id": model.model_id,
        "checkpoint": str(model.path) if model.path else None,
        "data": str(dataset.source),
        "format": dataset.format,
        "splits": dataset.splits,
    }
    report["generation"] = {"beam_size": beam_size, "max_length": max_length, "length_penalty": length_penalty}
    report["speed"] = {
        "images": len(run.pairs),
        "seconds": round(run.seconds, 3),
        "images_per_second": round(run.images_per_second, 2),
    }
    report["failed"] = [{"file": _relative_name(i, dataset), "reason": r} for i, r in run.failed]
    return report
