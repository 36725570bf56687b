"""Captions files: JSONL or CSV lines written crash-safely, read back to resume.

Every line is written with a single ``write`` call on an unbuffered file, so a killed run
leaves at most one torn line at the end (only on power loss or a full disk).
:meth:`LineWriter.open_for_resume` cuts any partial trailing line and returns the records
already there. Files that cannot be captioned go to an errors file
(:func:`default_errors_path`), one JSON object per line with ``file`` (named as in the
captions file) and ``reason``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

from .errors import CaptionerError

__all__ = ["CSV_HEADER", "FORMATS", "LineWriter", "default_errors_path", "encode_line", "format_for", "read_records"]

FORMATS = ("jsonl", "csv")
# file, caption, score, then how far to trust the caption (captioner.trust; empty cells when
# the checkpoint cannot tell). Files written before the trust columns keep their 3 columns.
CSV_HEADER = ["file", "caption", "score", "confidence", "in_domain", "domain_distance", "labels"]
LEGACY_CSV_HEADER = CSV_HEADER[:3]


def _csv_cell(value: object) -> object:
    """None -> empty, booleans as true/false, labels as "tabby:0.42; tiger cat:0.21"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "; ".join(f"{v['name']}:{v['probability']}" if isinstance(v, dict) else str(v) for v in value)
    return value


def encode_line(record: dict, fmt: str, columns: list[str] = CSV_HEADER) -> bytes:
    """One complete output line (ending in a newline) for ``record`` (CSV: its ``columns``)."""
    if fmt == "jsonl":
        try:
            return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not valid UTF-8 (surrogate escapes)
            return (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_csv_cell(record.get(k)) for k in columns])
    return buf.getvalue().encode("utf-8", "surrogateescape")


def _truncate_partial_line(path: Path) -> int:
    """Cut everything after the last newline (a line torn by a crash). Returns bytes cut."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        pos = size
        chunk = 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return size - keep


def read_records(path: str | os.PathLike, fmt: str, *, ignore_partial: bool = True) -> list[dict]:
    """The records of a captions file written by :func:`caption_folder`.

    A trailing line without its newline (torn by a crash) is ignored. Raises
    :class:`CaptionerError` naming the file and line when a complete line is not a
    captions record, so a run never appends to some unrelated file.
    """
    path = Path(path)
    data = path.read_bytes()
    if ignore_partial and data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    text = data.decode("utf-8", "surrogateescape")
    records: list[dict] = []
    hint = "pass another --out, or remove the file to start over"
    if fmt == "jsonl":
        for n, line in enumerate(text.split("\n")[:-1] if text else [], start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise CaptionerError(f"{path}: line {n} is not JSON ({e.msg}); {hint}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or "caption" not in rec:
                raise CaptionerError(
                    f'{path}: line {n} is not a captions record (expected {{"file", "caption", "score"}}); {hint}'
                )
            records.append(rec)
        return records
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return records
    header = rows[0]
    if header not in (CSV_HEADER, LEGACY_CSV_HEADER):
        raise CaptionerError(f"{path}: the first line is not the header {','.join(CSV_HEADER)}; {hint}")
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise CaptionerError(f"{path}: row {n} has {len(row)} fields, expected {len(header)}; {hint}")
        try:
            score = float(row[2])
        except ValueError:
            raise CaptionerError(f"{path}: row {n} has a score that is not a number ({row[2]!r}); {hint}") from None
        records.append({"file": row[0], "caption": row[1], "score": score})
    return records


class LineWriter:
    """Appends whole lines to a file: one ``os.write`` per line, nothing buffered.

    ``open_for_resume`` repairs a torn last line first and returns the records already
    in the file; the CSV header is written once, when the file is new.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.columns = CSV_HEADER  # an earlier file's header when resuming it
        self._fd: int | None = None

    def open_for_resume(self) -> list[dict]:
        records: list[dict] = []
        if self.path.exists():
            if not self.path.is_file():
                raise CaptionerError(f"{self.path}: exists and is not a file; pass another --out")
            try:
                records = read_records(self.path, self.fmt)  # validates before we touch it
                _truncate_partial_line(self.path)
                if self.fmt == "csv" and self.path.read_bytes().startswith(
                    ",".join(LEGACY_CSV_HEADER).encode() + b"\n"
                ):
                    self.columns = LEGACY_CSV_HEADER  # keep an older file's three columns
            except OSError as e:
                raise CaptionerError(f"{self.path}: cannot read the earlier output ({e.strerror or e})") from None
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open(os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        if self.fmt == "csv" and os.fstat(self._fd).st_size == 0:
            self._write_bytes(encode_line(dict(zip(CSV_HEADER, CSV_HEADER)), "csv"))
        return records

    def open_fresh(self) -> None:
        """Start an empty file (the errors file describes the latest run only)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open(os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.path, flags, 0o644)
        except OSError as e:
            raise CaptionerError(f"{self.path}: cannot open for writing ({e.strerror or e})") from None

    def _write_bytes(self, data: bytes) -> None:
        assert self._fd is not None, "open the writer first"
        view = memoryview(data)
        try:
            while view:  # a regular file takes it in one call; loop only for a short write
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:
            raise CaptionerError(
                f"{self.path}: cannot write ({e.strerror or e}); the lines already there are "
                "complete: fix the problem (e.g. free disk space) and rerun to resume"
            ) from None

    def write(self, record: dict) -> None:
        self._write_bytes(encode_line(record, self.fmt, self.columns))

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def format_for(out: str | os.PathLike, fmt: str | None) -> str:
    """``fmt`` if given, else from the output's extension (``.csv`` -> csv, else jsonl)."""
    if fmt is None:
        return "csv" if Path(out).suffix.lower() == ".csv" else "jsonl"
    if fmt not in FORMATS:
        raise CaptionerError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def default_errors_path(out: str | os.PathLike) -> Path:
    """The failures file of an output (always JSONL), one per output even in a shared folder:
    ``captions.jsonl`` -> ``captions.errors.jsonl``; any other format keeps its extension,
    ``captions.csv`` -> ``captions.csv.errors.jsonl``, ``captions.parquet`` ->
    ``captions.parquet.errors.jsonl``."""
    out = Path(out)
    if out.suffix.lower() == ".jsonl":
        return out.with_name(f"{out.stem}.errors.jsonl")
    return out.with_name(f"{out.name}.errors.jsonl")
