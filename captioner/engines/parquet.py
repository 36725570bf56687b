"""Captions as a folder of Parquet files, the usual format for millions of rows.

``--out captions.parquet`` is a folder of part files (``part-00000.parquet``, ...), each
with the columns of the JSONL output: ``file`` (string), ``caption`` (string), ``score``
(float64), then the trust fields of :func:`captioner.trust.result_fields`: ``confidence``
and ``domain_distance`` (float64), ``in_domain`` (bool), ``labels`` (a list of
``{name, probability}``); null where the checkpoint cannot tell. Any Parquet reader takes the folder as one table
(``pyarrow.parquet.read_table``, ``pandas.read_parquet``, ``ray.data.read_parquet``,
Spark, DuckDB).

Crash safety: rows are buffered and written as one complete part every ``rows_per_part``
rows or ``seconds_per_part`` seconds, to a hidden temporary name that is then renamed, so
a part on disk is always whole; a killed run loses only its buffered rows, which the
rerun captions again. A rerun reads the ``file`` column of every part to skip those
files, and removes temporary files left by a killed run.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ..errors import CaptionerError
from ..fsio import atomic_write_path

PART_NAME = re.compile(r"^part-(\d+)\.parquet$")
COLUMNS = ("file", "caption", "score", "confidence", "in_domain", "domain_distance", "labels")


def _schema():  # pyarrow is imported only when Parquet is written or read
    import pyarrow as pa

    label = pa.struct([("name", pa.string()), ("probability", pa.float64())])
    return pa.schema(
        [
            ("file", pa.string()),
            ("caption", pa.string()),
            ("score", pa.float64()),
            ("confidence", pa.float64()),
            ("in_domain", pa.bool_()),
            ("domain_distance", pa.float64()),
            ("labels", pa.list_(label)),
        ]
    )


class ParquetParts:
    """Writes captions records (``file``, ``caption``, ``score``, the trust fields) as Parquet parts."""

    def __init__(self, folder: str | os.PathLike, rows_per_part: int = 50_000, seconds_per_part: float = 60.0) -> None:
        self.folder = Path(folder)
        self.rows_per_part = max(1, rows_per_part)
        self.seconds_per_part = seconds_per_part
        self._rows: list[dict] = []
        self._next = 0
        self._last_flush = time.monotonic()

    def parts(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if PART_NAME.match(p.name))

    def open_for_resume(self) -> set[str]:
        """Create the folder or read the files already captioned in it."""
        import pyarrow.parquet as pq

        if self.folder.exists() and not self.folder.is_dir():
            raise CaptionerError(f"{self.folder}: exists and is not a folder; Parquet output is a folder of parts")
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".part-*.tmp"):
            leftover.unlink(missing_ok=True)
        done: set[str] = set()
        for part in self.parts():
            try:
                table = pq.read_table(part, columns=["file"])
            except Exception as e:  # not Parquet, or without a file column
                raise CaptionerError(
                    f"{part}: not a captions part ({e}); pass another --out, or remove the folder to start over"
                ) from None
            done.update(table.column("file").to_pylist())
            match = PART_NAME.match(part.name)
            assert match is not None
            self._next = max(self._next, int(match.group(1)) + 1)
        return done

    def write(self, record: dict) -> None:
        self._rows.append({k: record.get(k) for k in COLUMNS})
        full = len(self._rows) >= self.rows_per_part
        if full or time.monotonic() - self._last_flush >= self.seconds_per_part:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one complete part."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._last_flush = time.monotonic()
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=_schema())
        name = f"part-{self._next:05d}.parquet"
        try:
            atomic_write_path(self.folder / name, lambda tmp: pq.write_table(table, tmp))
        except OSError as e:
            raise CaptionerError(
                f"{self.folder}: cannot write {name} ({e.strerror or e}); the parts already there are "
                "complete: fix the problem (e.g. free disk space) and rerun to resume"
            ) from None
        self._rows.clear()
        self._next += 1

    def close(self) -> None:
        self.flush()


def read_parquet_records(folder: str | os.PathLike) -> list[dict]:
    """Every record in a Parquet captions folder, in part order."""
    import pyarrow.parquet as pq

    records: list[dict] = []
    for part in ParquetParts(folder).parts():
        records.extend(pq.read_table(part).to_pylist())
    return records
