"""Caption datasets: the standard formats, one common structure, shared validation.

    from captioner.training.datasets import load_dataset
    ds = load_dataset("data/scenes")                       # a folder of captions_*.json (COCO)
    ds = load_dataset("Flickr8k.token.txt", images_dir="Flicker8k_Dataset")
    ds = load_dataset("dataset_coco.json", images_dir="coco")      # Karpathy split
    ds = load_dataset("mine.jsonl")                                # {"file": ..., "caption": ...}
    print(ds.splits, ds.report.summary())
    for item in ds.split("train"):  item.image_path, item.captions

Every loader returns a :class:`CaptionDataset` whose :class:`LoadReport` counts and
locates what was wrong with the input (missing images, malformed lines, empty captions,
duplicates, bytes that are not UTF-8) instead of stopping at the first problem.
"""

from __future__ import annotations

import re
from pathlib import Path

from .coco import coco_files, load_coco
from .common import (
    CaptionDataset,
    CaptionedImage,
    DatasetError,
    LoadReport,
    OnMissing,
    Problem,
)
from .flickr import load_flickr
from .karpathy import load_karpathy
from .simple import load_csv, load_jsonl

FORMATS = ("auto", "coco", "flickr", "karpathy", "jsonl", "csv")

__all__ = [
    "FORMATS",
    "CaptionDataset",
    "CaptionedImage",
    "DatasetError",
    "LoadReport",
    "Problem",
    "detect_format",
    "load_coco",
    "load_csv",
    "load_dataset",
    "load_flickr",
    "load_jsonl",
    "load_karpathy",
]

_FLICKR_LINE = re.compile(rb"^[^\t#\r\n]+#\d+\t")


def _flickr_token_file(folder: Path) -> Path | None:
    """The caption token file of a Flickr folder (not the lemmatised one)."""
    files = [p for p in sorted(folder.glob("*.token*")) if p.is_file() and "lemma" not in p.name.lower()]
    return files[0] if files else None


def detect_format(path: str | Path) -> tuple[str, Path]:
    """(format, file or folder to load) for ``path``, from names and a look at the content."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir():
        if coco_files(path):
            return "coco", path
        karpathy = sorted(path.glob("dataset_*.json"))
        if len(karpathy) == 1:
            return "karpathy", karpathy[0]
        if len(karpathy) > 1:
            raise DatasetError(
                f"{path}: several Karpathy split files ({', '.join(p.name for p in karpathy)}); name the one to use"
            )
        token = _flickr_token_file(path)
        if token is not None:
            return "flickr", token
        raise DatasetError(
            f"{path}: found no captions_*.json (COCO), dataset_*.json (Karpathy) or *.token* "
            "(Flickr) file; name the caption file, or pass --format"
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl", path
    if suffix in (".csv", ".tsv"):
        return "csv", path
    if ".token" in path.name.lower():
        return "flickr", path
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if suffix == ".json":
        if b'"sentences"' in head or b'"filename"' in head:
            return "karpathy", path
        if b'"file_name"' in head or b'"annotations"' in head:
            return "coco", path
        import json

        data = json.loads(head.decode("utf-8", "replace")) if len(head) < (1 << 16) else None
        if isinstance(data, dict) and "images" in data:
            return "coco", path
        raise DatasetError(
            f"{path}: cannot tell whether this JSON is COCO captions or a Karpathy split; "
            "pass --format coco or --format karpathy"
        )
    first = next((line for line in head.splitlines() if line.strip()), b"")
    if _FLICKR_LINE.match(first):
        return "flickr", path
    if first.lstrip().startswith(b"{"):
        return "jsonl", path
    raise DatasetError(f"{path}: unknown caption file format; pass --format (one of {', '.join(FORMATS[1:])})")


def load_dataset(
    path: str | Path,
    format: str = "auto",
    *,
    images_dir: str | Path | None = None,
    split: str | None = None,
    on_missing: OnMissing = "skip",
    check_files: bool = True,
    fold_restval: bool = True,
    progress: bool | None = None,
) -> CaptionDataset:
    """Load any supported caption dataset.

    ``path``: a caption file, or a folder holding one (a scenes dataset is a folder of
    COCO files). ``format``: one of :data:`FORMATS`; "auto" looks at names and content.
    ``split``: keep only this split. ``on_missing``: "skip" leaves images whose file is
    missing out (and reports them), "error" raises. ``check_files=False`` trusts the
    caption file and does not look at the image files at all.
    """
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if format == "auto":
        format, path = detect_format(path)
    elif format == "flickr" and path.is_dir():
        token = _flickr_token_file(path)
        if token is None:
            raise DatasetError(f"{path}: no *.token* file in this folder")
        path = token
    if format == "coco":
        ds = load_coco(path, images_dir, on_missing=on_missing, check_files=check_files, progress=progress)
    elif format == "flickr":
        ds = load_flickr(path, images_dir, on_missing=on_missing, check_files=check_files, progress=progress)
    elif format == "karpathy":
        ds = load_karpathy(
            path,
            images_dir,
            fold_restval=fold_restval,
            on_missing=on_missing,
            check_files=check_files,
            progress=progress,
        )
    elif format == "jsonl":
        ds = load_jsonl(path, images_dir, on_missing=on_missing, check_files=check_files, progress=progress)
    else:
        ds = load_csv(path, images_dir, on_missing=on_missing, check_files=check_files, progress=progress)
    return ds.split(split) if split else ds
