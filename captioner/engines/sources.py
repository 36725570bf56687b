"""What a batch run captions: the sources named on the command line, as files with keys.

A source is one of

* a local folder or file: listed by :func:`captioner.folder.find_images`, so the keys are
  the ones the local folder tool writes (relative to the inputs' common folder);
* a glob (``photos/**/*.jpg``): the matching files and folders, as if named one by one;
* a manifest, a local ``.jsonl`` or ``.csv`` file with a ``path`` column (another column
  with ``path_column``): one image per row, keyed by the path as written; relative paths
  are read from the manifest's folder, URIs as they are;
* a URI (``s3://bucket/photos``, ``gs://...``, ``file:///...``): listed and read through
  ``pyarrow.fs``, so any filesystem pyarrow supports works when its support is installed;
  keys are relative to the URI.

Listing happens once, on the driver, before anything is read: the run needs the full list
to skip what an earlier run finished and to report what it found.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CaptionerError, ImageLoadError
from ..folder import FileProblem, find_images
from ..images import DEFAULT_MAX_BYTES, IMAGE_EXTENSIONS

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow.fs

MANIFEST_SUFFIXES = (".jsonl", ".csv")
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Source:
    """One image to caption: ``key`` names it in the outputs, ``location`` opens it (a
    local path, or a URI read through ``pyarrow.fs``)."""

    key: str
    location: str


def is_uri(text: str) -> bool:
    """``s3://...``, ``gs://...``, ``file:///...``: a location pyarrow opens (not a Windows drive)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum()


def _is_manifest(spec: str) -> bool:
    return Path(spec).suffix.lower() in MANIFEST_SUFFIXES and Path(spec).is_file()


def _manifest_rows(path: Path, column: str) -> list[str]:
    """The ``column`` values of a JSONL or CSV manifest, in file order."""
    values: list[str] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                if reader.fieldnames is None or column not in reader.fieldnames:
                    raise CaptionerError(f"{path}: the manifest has no {column!r} column (header: {reader.fieldnames})")
                for n, row in enumerate(reader, start=2):
                    if not row.get(column):
                        raise CaptionerError(f"{path}: row {n} has an empty {column!r}")
                    values.append(row[column])
                return values
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CaptionerError(f"{path}: line {n} is not JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get(column), str) or not row[column]:
                    raise CaptionerError(f"{path}: line {n} has no {column!r} string")
                values.append(row[column])
    except (OSError, UnicodeDecodeError) as e:
        raise CaptionerError(f"{path}: cannot read the manifest ({e})") from None
    return values


def _from_manifest(path: Path, column: str) -> list[Source]:
    base = path.parent
    out = []
    for value in _manifest_rows(path, column):
        location = value if is_uri(value) or os.path.isabs(value) else str(base / value)
        out.append(Source(value, location))
    return out


@functools.lru_cache(maxsize=16)
def _filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # unknown scheme, missing support, bad credentials
        raise CaptionerError(
            f"{uri}: cannot open ({e}); install the filesystem's support for pyarrow (e.g. S3 or GCS)"
        ) from None


def _from_uri(uri: str, recursive: bool) -> tuple[list[Source], list[FileProblem]]:
    from pyarrow import fs as pafs

    filesystem, root = _filesystem(uri)
    try:
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise CaptionerError(f"{uri}: no such file or folder")
        if info.type == pafs.FileType.File:
            return [Source(Path(root).name, uri)], []
        listing = filesystem.get_file_info(pafs.FileSelector(root, recursive=recursive))
    except OSError as e:
        raise CaptionerError(f"{uri}: cannot list ({e})") from None
    prefix = uri.rstrip("/")
    sources = []
    for entry in listing:
        rel = Path(os.path.relpath(entry.path, root)).as_posix()
        if entry.type != pafs.FileType.File or any(part.startswith(".") for part in rel.split("/")):
            continue
        if Path(rel).suffix.lower() in IMAGE_EXTENSIONS:
            sources.append(Source(rel, f"{prefix}/{rel}"))
    return sources, []


def list_sources(
    specs: Sequence[str], recursive: bool = False, path_column: str = "path"
) -> tuple[list[Source], list[FileProblem]]:
    """Every image named by ``specs`` (folders, files, globs, manifests, URIs), one per key
    (the first wins), sorted by key; and the problems the walk met (broken links, ...).

    Raises :class:`CaptionerError` for a source that does not exist, a glob that matches
    nothing or a manifest that cannot be read."""
    if not specs:
        raise CaptionerError("no input given; pass image files, folders, globs, manifests or URIs")
    local: list[str] = []
    found: list[Source] = []
    problems: list[FileProblem] = []
    for spec in specs:
        if is_uri(spec):
            more, issues = _from_uri(spec, recursive)
            found += more
            problems += issues
        elif _is_manifest(spec):
            found += _from_manifest(Path(spec), path_column)
        elif any(c in spec for c in GLOB_CHARS) and not os.path.exists(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise CaptionerError(f"{spec}: the pattern matches no files")
            local += matches
        else:
            local.append(spec)
    if local:
        items, issues = find_images(local, recursive=recursive)
        found += [Source(it.key, str(it.path)) for it in items]
        problems += issues
    unique: dict[str, Source] = {}
    for src in found:
        unique.setdefault(src.key, src)
    return sorted(unique.values(), key=lambda s: s.key), sorted(problems, key=lambda p: p.key)


def read_source(location: str, key: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes | str:
    """The bytes behind a URI (refused above ``max_bytes`` before reading), or a local path
    unchanged: the safe loader opens local files itself, with its own checks."""
    if not is_uri(location):
        return location
    from pyarrow import fs as pafs

    try:
        filesystem, path = _filesystem(location)
        info = filesystem.get_file_info(path)
    except (CaptionerError, OSError) as e:
        raise ImageLoadError(key, f"cannot open ({e})") from None
    if info.type == pafs.FileType.NotFound:
        raise ImageLoadError(key, "file not found", "not_found")
    if info.type != pafs.FileType.File:
        raise ImageLoadError(key, "not a regular file")
    if info.size is not None and info.size > max_bytes:
        raise ImageLoadError(key, f"file is {info.size} bytes, more than the limit of {max_bytes}", "too_large")
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read(max_bytes + 1)
    except OSError as e:
        raise ImageLoadError(key, f"cannot read file ({e})") from None
