"""Users' own data: JSON Lines or CSV rows of (image file, caption).

    captions.jsonl:  {"file": "photos/cat.jpg", "caption": "a cat on a sofa", "split": "train"}
                     {"file": "photos/cat.jpg", "captions": ["a cat", "a sleeping cat"]}
    captions.csv:    file,caption,split            (header optional; .tsv means tab-separated)
                     photos/cat.jpg,a cat on a sofa,train

Rows of the same file are one image with several captions. The file column may be
called file, image, file_name, filename, image_path or path; the caption column
caption, text or sentence; ``split`` is optional (default "train"). Paths are relative
to ``images_dir`` (default: the caption file's folder).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .common import (
    SPLIT_ALIASES,
    SPLIT_NAMES,
    CaptionDataset,
    Collector,
    LoadReport,
    OnMissing,
    iter_text_lines,
    resolve,
)

FILE_KEYS = ("file", "image", "file_name", "filename", "image_path", "path")
CAPTION_KEYS = ("caption", "text", "sentence")


def _split_of(value: object, default: str, report: LoadReport, where: str) -> str | None:
    if value is None or value == "":
        return default
    given = value.strip().lower() if isinstance(value, str) else ""
    split = SPLIT_ALIASES.get(given, given)
    if split not in SPLIT_NAMES:
        report.add("malformed", where, f"split must be one of {list(SPLIT_NAMES)}, got {value!r}")
        return None
    return split


def load_jsonl(
    path: str | Path,
    images_dir: str | Path | None = None,
    *,
    default_split: str = "train",
    on_missing: OnMissing = "skip",
    check_files: bool = True,
    progress: bool | None = None,
) -> CaptionDataset:
    """Load a JSON Lines file of {file, caption | captions[, split]} objects."""
    path = Path(path)
    report = LoadReport(str(path))
    folder = Path(images_dir) if images_dir is not None else path.parent
    collector = Collector(path, "jsonl", report)
    for number, line in iter_text_lines(path, report):
        where = f"{path.name}:{number}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            report.add("malformed", where, f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            report.add("malformed", where, "expected a JSON object")
            continue
        name = next((row[k] for k in FILE_KEYS if k in row), None)
        if not isinstance(name, str) or not name.strip():
            report.add("malformed", where, f"needs an image file name under one of {list(FILE_KEYS)}")
            continue
        if "captions" in row:
            captions = row["captions"]
            if not isinstance(captions, list):
                report.add("malformed", where, "'captions' must be a list of strings")
                continue
        else:
            key = next((k for k in CAPTION_KEYS if k in row), None)
            if key is None:
                report.add("malformed", where, f"needs a caption under one of {list(CAPTION_KEYS)} or 'captions'")
                continue
            captions = [row[key]]
        split = _split_of(row.get("split"), default_split, report, where)
        if split is None:
            continue
        entry = collector.image(name, resolve(folder, name), split, name)
        for caption in captions:
            collector.caption(entry, caption, where)
    return collector.build(folder, on_missing, check_files, progress)


def load_csv(
    path: str | Path,
    images_dir: str | Path | None = None,
    *,
    delimiter: str | None = None,
    default_split: str = "train",
    on_missing: OnMissing = "skip",
    check_files: bool = True,
    progress: bool | None = None,
) -> CaptionDataset:
    """Load a CSV (or, for ``.tsv``, tab-separated) file of file, caption[, split] rows.

    A first row naming the columns (see the module docstring) is a header; otherwise
    the columns are file, caption and optionally split, in that order.
    """
    path = Path(path)
    report = LoadReport(str(path))
    folder = Path(images_dir) if images_dir is not None else path.parent
    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    collector = Collector(path, "csv", report)

    numbers: list[int] = []  # line number of every line handed to the csv reader

    def lines():
        for number, text in iter_text_lines(path, report):
            numbers.append(number)
            yield text + "\n"

    reader = csv.reader(lines(), delimiter=delimiter)
    columns: tuple[int, int, int | None] | None = None  # indices of file, caption, split
    width = 0  # columns a row may have
    consumed = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            report.add("malformed", f"{path.name}:{numbers[-1] if numbers else 1}", f"not valid CSV ({e})")
            consumed = len(numbers)
            continue
        number = numbers[consumed] if consumed < len(numbers) else len(numbers)
        consumed = len(numbers)
        where = f"{path.name}:{number}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if columns is None:
            header = [cell.strip().lower() for cell in row]
            file_col = next((header.index(k) for k in FILE_KEYS if k in header), None)
            caption_col = next((header.index(k) for k in CAPTION_KEYS if k in header), None)
            if file_col is not None and caption_col is not None:
                columns = (file_col, caption_col, header.index("split") if "split" in header else None)
                width = len(row)
                continue
            columns = (0, 1, 2 if len(row) >= 3 else None)
            width = max(len(row), 2)
        file_col, caption_col, split_col = columns
        if len(row) <= max(file_col, caption_col):
            report.add("malformed", where, f"expected columns file, caption[, split]; got {len(row)} column(s)")
            continue
        if len(row) > width:
            report.add(
                "malformed",
                where,
                f"{len(row)} columns where {width} were expected; quote captions that contain the delimiter",
            )
            continue
        name = row[file_col].strip()
        if not name:
            report.add("malformed", where, "empty file name")
            continue
        split_value = row[split_col] if split_col is not None and split_col < len(row) else None
        split = _split_of(split_value, default_split, report, where)
        if split is None:
            continue
        entry = collector.image(name, resolve(folder, name), split, name)
        collector.caption(entry, row[caption_col], where)
    return collector.build(folder, on_missing, check_files, progress)
