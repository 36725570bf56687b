"""The structure every loader produces, and the checks they all share.

A loader turns some caption file format into a :class:`CaptionDataset`: a list of
:class:`CaptionedImage` (image path, reference captions, split) plus a
:class:`LoadReport` of everything that was wrong with the input. Bad input never stops a
load silently and never kills it for one bad line: each problem is recorded with where
it is (``file:line`` or the JSON entry), counted, and the offending line, caption or
image is left out. Only a file that cannot be read at all (not JSON, wrong top-level
shape) raises :class:`DatasetError`, and so do missing images when the caller asks for
``on_missing="error"``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from captioner.errors import CaptionerError

OnMissing = Literal["skip", "error"]
SPLIT_NAMES = ("train", "val", "test", "restval")
SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val"}
EXAMPLES_KEPT = 20  # problems remembered in full per kind; the rest are only counted
EXAMPLES_SHOWN = 5  # ... and shown in a summary
PROGRESS_MIN = 5000  # show a progress bar when checking at least this many files


class DatasetError(CaptionerError):
    """A caption file cannot be used at all (or missing images with on_missing='error')."""


@dataclass
class CaptionedImage:
    """One image with its reference captions."""

    image_path: Path
    captions: list[str]
    split: str  # "train", "val", "test" (or "restval" when not folded into train)
    image_id: str | int  # the id the source format gives it (COCO id, Flickr file name, ...)


# Kinds of problem a report counts, with the phrase a summary uses for them.
PROBLEM_KINDS: dict[str, str] = {
    "missing_file": "image files missing",
    "malformed": "malformed lines or entries",
    "encoding": "lines that are not valid UTF-8",
    "empty_caption": "empty captions",
    "no_captions": "images without captions",
    "duplicate": "duplicate ids or entries",
    "unknown_image": "captions of images not in the image list",
    "not_in_split": "images in no split list",
}


@dataclass
class Problem:
    kind: str  # a key of PROBLEM_KINDS
    where: str  # "Flickr8k.token.txt:12", "captions.json: annotations[3]", an image path
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class LoadReport:
    """Everything a load found wrong: counts per kind and the first few of each, located."""

    source: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[Problem]] = field(default_factory=dict)

    def add(self, kind: str, where: str, message: str) -> None:
        assert kind in PROBLEM_KINDS, kind
        self.counts[kind] += 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(Problem(kind, where, message))

    def count(self, kind: str) -> int:
        return self.counts.get(kind, 0)

    def problems(self, kind: str) -> list[Problem]:
        """The first problems of ``kind`` (up to EXAMPLES_KEPT), in the order found."""
        return list(self.examples.get(kind, []))

    @property
    def missing_files(self) -> int:
        return self.count("missing_file")

    @property
    def missing_examples(self) -> list[str]:
        return [p.where for p in self.problems("missing_file")]

    @property
    def ok(self) -> bool:
        return not self.counts

    def summary(self, shown: int = EXAMPLES_SHOWN) -> str:
        """Human-readable lines: one per kind of problem with its first examples."""
        if self.ok:
            return f"{self.source}: no problems found"
        lines = [f"{self.source}: problems found"]
        for kind, phrase in PROBLEM_KINDS.items():
            n = self.count(kind)
            if not n:
                continue
            lines.append(f"  {n} {phrase}")
            for p in self.problems(kind)[:shown]:
                lines.append(f"    {p}")
            if n > shown:
                lines.append(f"    ... and {n - shown} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "counts": dict(self.counts),
            "examples": {k: [str(p) for p in v] for k, v in self.examples.items()},
        }


@dataclass
class CaptionDataset:
    """Images with reference captions, from any supported format."""

    items: list[CaptionedImage]
    format: str  # "coco", "flickr", "karpathy", "jsonl", "csv"
    source: Path
    images_dir: Path | None
    report: LoadReport

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[CaptionedImage]:
        return iter(self.items)

    def __getitem__(self, i: int) -> CaptionedImage:
        return self.items[i]

    @property
    def splits(self) -> dict[str, int]:
        """Images per split, in the order train, val, test, then any others."""
        counts = Counter(item.split for item in self.items)
        order = [s for s in SPLIT_NAMES if s in counts] + sorted(set(counts) - set(SPLIT_NAMES))
        return {s: counts[s] for s in order}

    def split(self, *names: str) -> CaptionDataset:
        """The images of the given split(s) only (same report)."""
        unknown = set(names) - set(self.splits)
        if unknown:
            raise DatasetError(
                f"{self.source}: no images in split(s) {sorted(unknown)}; "
                f"the splits here are {list(self.splits) or 'none'}"
            )
        return CaptionDataset(
            [i for i in self.items if i.split in names], self.format, self.source, self.images_dir, self.report
        )

    def captions(self) -> Iterator[str]:
        for item in self.items:
            yield from item.captions

    @property
    def num_captions(self) -> int:
        return sum(len(i.captions) for i in self.items)


# --------------------------------------------------------------------------- reading text


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, expected a caption file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None


def iter_text_lines(path: Path, report: LoadReport, data: bytes | None = None) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of each line, whatever the line endings.

    A UTF-8 byte-order mark is dropped; a line that is not valid UTF-8 is reported as an
    ``encoding`` problem (with the byte and column) and skipped, so one stray Latin-1
    byte costs one caption, not the whole file.
    """
    data = read_bytes(path) if data is None else data
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            report.add(
                "encoding",
                f"{path.name}:{number}",
                f"byte 0x{raw[e.start]:02X} at column {e.start + 1} is not UTF-8; line skipped "
                "(re-save the file as UTF-8)",
            )


def decode_json_text(path: Path, report: LoadReport) -> str:
    """A JSON file's text; undecodable bytes become lone surrogates, each bad line is reported.

    ``json.loads`` accepts the surrogates, and :func:`clean_caption` then refuses the
    captions that contain them, so a bad byte costs one caption.
    """
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            report.add(
                "encoding",
                f"{path.name}:{number}",
                f"byte 0x{raw[e.start]:02X} at column {e.start + 1} is not UTF-8; the caption there is skipped",
            )
    return data.decode("utf-8", errors="surrogateescape")


def load_json(path: Path, report: LoadReport):
    """Parse a JSON file, raising :class:`DatasetError` with the line and column if it is not JSON."""
    import json

    text = decode_json_text(path, report)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None


def has_bad_bytes(text: str) -> bool:
    """True if ``text`` holds bytes that were not UTF-8 (decoded as lone surrogates)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def clean_caption(text: str) -> str:
    """Collapse all whitespace (newlines, tabs, runs of spaces) to single spaces and strip."""
    return " ".join(text.split())


# --------------------------------------------------------------------------- building datasets


class Collector:
    """Gathers captions per image in first-seen order, then checks files and builds the dataset."""

    def __init__(self, source: Path, fmt: str, report: LoadReport) -> None:
        self.source = source
        self.format = fmt
        self.report = report
        self.entries: dict[object, CaptionedImage] = {}

    def image(self, key: object, path: Path, split: str, image_id: str | int) -> CaptionedImage:
        """The entry for ``key``, created (with no captions yet) on first sight."""
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = CaptionedImage(image_path=path, captions=[], split=split, image_id=image_id)
        return entry

    def caption(self, entry: CaptionedImage, text: object, where: str) -> None:
        """Add one caption after checking it is a non-empty string of valid text."""
        if not isinstance(text, str):
            self.report.add("malformed", where, f"caption must be a string, got {type(text).__name__}")
            return
        if has_bad_bytes(text):
            return  # already reported, with its line, by decode_json_text
        text = clean_caption(text)
        if not text:
            self.report.add("empty_caption", where, "empty caption skipped")
            return
        entry.captions.append(text)

    def build(
        self, images_dir: Path | None, on_missing: OnMissing, check_files: bool, progress: bool | None
    ) -> CaptionDataset:
        items = list(self.entries.values())
        items = check_image_files(items, self.report, on_missing, check_files, progress, images_dir)
        kept = []
        for item in items:
            if item.captions:
                kept.append(item)
            else:
                self.report.add("no_captions", str(item.image_id), "image has no caption; left out")
        return CaptionDataset(kept, self.format, self.source, images_dir, self.report)


def check_image_files(
    items: Sequence[CaptionedImage],
    report: LoadReport,
    on_missing: OnMissing,
    check_files: bool,
    progress: bool | None,
    images_dir: Path | None,
) -> list[CaptionedImage]:
    """Drop (and report) the items whose image file does not exist, or raise if on_missing='error'."""
    if on_missing not in ("skip", "error"):
        raise ValueError(f"on_missing must be 'skip' or 'error', not {on_missing!r}")
    if not check_files:
        return list(items)
    show = progress if progress is not None else len(items) >= PROGRESS_MIN
    kept, missing = [], []
    for item in tqdm(items, desc="checking image files", unit="img", disable=not show, leave=False):
        if os.path.isfile(item.image_path):
            kept.append(item)
        else:
            missing.append(item)
            report.add("missing_file", str(item.image_path), "image file not found; left out")
    if missing and on_missing == "error":
        names = ", ".join(str(m.image_path) for m in missing[:EXAMPLES_SHOWN])
        more = f" and {len(missing) - EXAMPLES_SHOWN} more" if len(missing) > EXAMPLES_SHOWN else ""
        where = f" under {images_dir}" if images_dir else ""
        raise DatasetError(
            f"{report.source}: {len(missing)} of {len(items)} image files are missing{where}: "
            f"{names}{more}. Point to the image folder with --images DIR, or skip them "
            "with --on-missing skip"
        )
    return kept


def resolve(images_dir: Path, name: str) -> Path:
    """``images_dir / name``; absolute names are kept as they are."""
    p = Path(name)
    return p if p.is_absolute() else images_dir / p


def first_existing(candidates: Iterable[Path], default: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    return default
