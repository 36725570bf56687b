"""Caption a whole folder of images into a resumable JSONL or CSV file.

    captioner caption photos/ --out captions.jsonl --recursive

The run has three stages, pipelined so that the model never waits for the disk:

1. **walk**: :func:`find_images` lists the files with an image extension (hidden files
   and folders skipped, symbolic-link loops detected by the real path of every folder
   entered) and sorts them, so every run and every ``torchrun`` rank sees the same list;
2. **decode**: a pool of ``workers`` threads reads, decodes and preprocesses images ahead
   of the model through a bounded queue (Pillow and numpy release the GIL while they
   decode and resize, so threads scale without pickling tensors between processes);
3. **caption**: the main thread stacks decoded images into batches, runs the encoder and
   the decoder, and appends one line per image to the output as soon as its batch is done.

Crash safety: every line is written with a single ``write`` call on an unbuffered file,
so a killed run leaves at most one torn line at the end (only on power loss or a full
disk). A rerun with the same ``--out`` first cuts any partial trailing line, reads the
files already captioned and skips them. Files that cannot be captioned (corrupt, empty,
not an image, unreadable) go to an errors file, one JSON object per line with ``path`` and
``reason``; that file describes the latest run, because failed files are retried each time.

Beyond one process: under ``torchrun`` (``WORLD_SIZE`` > 1) rank *r* of *N* captions the
files ``r, r+N, r+2N, ...`` of the sorted list into its own part file
(``captions.part-r-of-N.jsonl``); when every rank is done, rank 0 merges the parts (and
any earlier merged output) into ``--out`` in sorted order and removes them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import CaptionerError, ImageLoadError
from .images import IMAGE_EXTENSIONS

if TYPE_CHECKING:  # pragma: no cover
    from .model import Captioner, CaptionResult

FORMATS = ("jsonl", "csv")
CSV_HEADER = ["file", "caption", "score"]


# ---------------------------------------------------------------------------- walking
@dataclass(frozen=True)
class ImageItem:
    """One file to caption: ``key`` is its path relative to the inputs' common folder
    (POSIX separators), the identity of the image in the output; ``path`` opens it."""

    key: str
    path: Path


@dataclass
class FileProblem:
    """A file the walk found but cannot caption (broken link, unreadable folder, ...)."""

    key: str
    reason: str


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(
    paths: Sequence[str | os.PathLike], recursive: bool = False
) -> tuple[list[ImageItem], list[FileProblem]]:
    """All images under ``paths`` (folders and/or files), sorted by key.

    A folder contributes its files with an image extension (``IMAGE_EXTENSIONS``,
    case-insensitive), and with ``recursive`` those of its sub-folders. Names starting
    with a dot are skipped. Symbolic links are followed, but a folder whose real path was
    already entered is not entered again, so link loops end. A file given by name is
    taken whatever its extension (the user asked for it). Keys are relative to the
    common parent of the inputs: for a single folder, to the folder itself.

    Returns the images and the problems met on the way (entries with an image extension
    that are not regular files, folders that cannot be listed). Raises
    :class:`CaptionerError` for an input that does not exist.
    """
    if not paths:
        raise CaptionerError("no input given; pass image files or folders")
    roots: list[tuple[Path, bool]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            roots.append((path, True))
        elif path.is_file():
            roots.append((path, False))
        elif path.exists() or path.is_symlink():
            raise CaptionerError(f"{path}: not a regular file or folder")
        else:
            raise CaptionerError(f"{path}: no such file or folder")
    bases = [os.path.abspath(r if is_dir else r.parent) for r, is_dir in roots]
    base = os.path.commonpath(bases)

    def key_of(path: Path) -> str:
        return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()

    found: dict[str, ImageItem] = {}
    problems: list[FileProblem] = []
    seen_dirs: set[str] = set()
    for root, is_dir in roots:
        if not is_dir:
            found.setdefault(key_of(root), ImageItem(key_of(root), root))
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            if real in seen_dirs:  # a link loop, or the same folder reached twice
                continue
            seen_dirs.add(real)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                problems.append(FileProblem(key_of(folder), f"cannot list folder ({e.strerror or e})"))
                continue
            subdirs = []
            for entry in entries:
                if _is_hidden(entry.name):
                    continue
                try:
                    is_subdir = entry.is_dir(follow_symlinks=True)
                    is_file = entry.is_file(follow_symlinks=True)
                except OSError:
                    is_subdir = is_file = False
                entry_path = Path(entry.path)
                if is_subdir:
                    if recursive:
                        subdirs.append(entry_path)
                    continue
                if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                key = key_of(entry_path)
                if is_file:
                    found.setdefault(key, ImageItem(key, entry_path))
                elif entry.is_symlink() and not entry_path.exists():
                    problems.append(FileProblem(key, "broken symbolic link"))
                else:
                    problems.append(FileProblem(key, "not a regular file"))
            stack.extend(reversed(subdirs))  # depth-first, in name order
    items = sorted(found.values(), key=lambda i: i.key)
    problems.sort(key=lambda p: p.key)
    return items, problems


# ---------------------------------------------------------------------------- output files
def _encode_line(record: dict, fmt: str) -> bytes:
    """One complete output line (ending in a newline) for ``record``."""
    if fmt == "jsonl":
        try:
            return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not valid UTF-8 (surrogate escapes)
            return (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([record[k] for k in CSV_HEADER])
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
    if rows[0] != CSV_HEADER:
        raise CaptionerError(f"{path}: the first line is not the header {','.join(CSV_HEADER)}; {hint}")
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(CSV_HEADER):
            raise CaptionerError(f"{path}: row {n} has {len(row)} fields, expected {len(CSV_HEADER)}; {hint}")
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
        self._fd: int | None = None

    def open_for_resume(self) -> list[dict]:
        records: list[dict] = []
        if self.path.exists():
            if not self.path.is_file():
                raise CaptionerError(f"{self.path}: exists and is not a file; pass another --out")
            try:
                records = read_records(self.path, self.fmt)  # validates before we touch it
                _truncate_partial_line(self.path)
            except OSError as e:
                raise CaptionerError(f"{self.path}: cannot read the earlier output ({e.strerror or e})") from None
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open(os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        if self.fmt == "csv" and os.fstat(self._fd).st_size == 0:
            self._write_bytes(_encode_line(dict(zip(CSV_HEADER, CSV_HEADER)), "csv"))
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
        self._write_bytes(_encode_line(record, self.fmt))

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------------------- paths
def format_for(out: str | os.PathLike, fmt: str | None) -> str:
    """``fmt`` if given, else from the output's extension (``.csv`` -> csv, else jsonl)."""
    if fmt is None:
        return "csv" if Path(out).suffix.lower() == ".csv" else "jsonl"
    if fmt not in FORMATS:
        raise CaptionerError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def default_errors_path(out: str | os.PathLike) -> Path:
    """``captions.jsonl`` -> ``captions.errors.jsonl`` (always JSONL)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.errors.jsonl")


def part_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """``captions.jsonl`` -> ``captions.part-1-of-4.jsonl`` for rank 1 of 4."""
    path = Path(path)
    return path.with_name(f"{path.stem}.part-{rank}-of-{world_size}{path.suffix}")


# ---------------------------------------------------------------------------- decoding
Decoded = tuple[torch.Tensor | None, str | None]  # (tensor (3, H, W), None) or (None, reason)


def _decode(model: Captioner, item: ImageItem) -> Decoded:
    """Read + decode + preprocess one file; any failure becomes a reason, never an exception."""
    try:
        return model.preprocess(item.path, name=item.key), None
    except ImageLoadError as e:
        return None, e.reason
    except Exception as e:  # a decoder bug in one file must not end the run
        return None, f"cannot decode image ({type(e).__name__}: {e})"


def iter_decoded(
    items: Iterable[ImageItem], decode: Callable[[ImageItem], Decoded], workers: int, prefetch: int
) -> Iterator[tuple[ImageItem, Decoded]]:
    """``(item, decode(item))`` in input order, decoded by ``workers`` threads at most
    ``prefetch`` images ahead of the consumer (0 workers: decode inline)."""
    if workers <= 0:
        for item in items:
            yield item, decode(item)
        return
    source = iter(items)
    pending: deque[tuple[ImageItem, Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        for item in source:
            pending.append((item, pool.submit(decode, item)))
            if len(pending) >= max(1, prefetch):
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(source, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(decode, nxt)))
            yield item, fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_batching(batch_size: int, workers: int) -> None:
    if batch_size < 1:
        raise CaptionerError("--batch-size must be at least 1")
    if workers < 0:
        raise CaptionerError("--workers must be 0 (decode in the main thread) or more")


def caption_stream(
    model: Captioner,
    items: Sequence[ImageItem],
    *,
    batch_size: int = 16,
    workers: int = 2,
    beam_size: int = 1,
    max_length: int | None = None,
    length_penalty: float = 0.0,
) -> Iterator[tuple[ImageItem, CaptionResult | None, str | None]]:
    """Caption ``items`` in order: ``(item, result, None)`` or ``(item, None, reason)``.

    Images are decoded by ``workers`` threads up to a few batches ahead of the model
    (a bounded queue, so memory stays flat on any folder size) and captioned in batches of
    ``batch_size``. A file that cannot be decoded is yielded with its reason as soon as
    it is reached; the results of a batch are yielded when the batch is done. Folder
    captioning and the evaluation command both caption through this one function.
    """
    check_batching(batch_size, workers)
    batch_items: list[ImageItem] = []
    batch_tensors: list[torch.Tensor] = []

    def run_batch() -> list[tuple[ImageItem, CaptionResult | None, str | None]]:
        features = model.encode(torch.stack(batch_tensors))  # (B, F)
        results = model.generate(features, beam_size=beam_size, max_length=max_length, length_penalty=length_penalty)
        out = [(it, res, None) for it, res in zip(batch_items, results)]
        batch_items.clear()
        batch_tensors.clear()
        return out

    prefetch = max(2 * batch_size, 4 * workers)
    for item, (tensor, reason) in iter_decoded(items, lambda it: _decode(model, it), workers, prefetch):
        if tensor is None:
            yield item, None, reason
            continue
        batch_items.append(item)
        batch_tensors.append(tensor)  # (3, H, W)
        if len(batch_items) >= batch_size:
            yield from run_batch()
    if batch_items:
        yield from run_batch()


# ---------------------------------------------------------------------------- the run
@dataclass
class FolderSummary:
    """What a run did. ``done`` counts images captioned by this run, ``skipped`` those
    already in the output, ``failed`` those listed in the errors file."""

    found: int
    done: int
    skipped: int
    failed: int
    seconds: float
    out: str
    errors: str
    rank: int = 0
    world_size: int = 1
    merged: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_second": round(self.images_per_second, 2)}

    def line(self) -> str:
        text = f"captioned {self.done}, skipped {self.skipped} (already in {self.out}), failed {self.failed}"
        if self.failed:
            text += f" (see {self.errors})"
        return text + f"; {self.seconds:.1f} s, {self.images_per_second:.1f} images/s"


def caption_folder(
    model: Captioner,
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    recursive: bool = False,
    batch_size: int = 16,
    workers: int = 2,
    beam_size: int = 1,
    max_length: int | None = None,
    length_penalty: float = 0.0,
    errors: str | os.PathLike | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> FolderSummary:
    """Caption every image under ``paths`` into ``out`` (see the module docstring).

    With ``world_size`` > 1 this process captions only its shard (every ``world_size``-th
    file from ``rank``) into its part file and errors part file; merging is
    :func:`merge_parts`, called once every rank has finished (``run_sharded`` does both).
    ``progress``: ``None`` shows a bar when stderr is a terminal.
    """
    from tqdm import tqdm

    check_batching(batch_size, workers)
    if not 0 <= rank < world_size:
        raise CaptionerError(f"rank {rank} is outside world size {world_size}")
    fmt = format_for(out, fmt)
    out = Path(out)
    errors = Path(errors) if errors is not None else default_errors_path(out)
    if out.resolve() == errors.resolve():
        raise CaptionerError(f"--errors and --out are the same file ({out}); pick another --errors")
    items, problems = find_images(paths, recursive=recursive)
    found = len(items)

    sharded = world_size > 1
    if sharded:
        items = items[rank::world_size]
        problems = problems[rank::world_size]
        out_file, err_file = part_path(out, rank, world_size), part_path(errors, rank, world_size)
    else:
        out_file, err_file = out, errors

    writer = LineWriter(out_file, fmt)
    done_keys = {r["file"] for r in writer.open_for_resume()}
    if sharded and out.exists():  # an earlier merged run: read only, rank 0 rewrites it later
        done_keys |= {r["file"] for r in read_records(out, fmt)}
    err_writer = LineWriter(err_file, "jsonl")
    err_writer.open_fresh()

    todo = [it for it in items if it.key not in done_keys]
    skipped = len(items) - len(todo)
    done = failed = 0

    def fail(key: str, reason: str) -> None:
        nonlocal failed
        err_writer.write({"path": key, "reason": reason})
        failed += 1

    for p in problems:
        fail(p.key, p.reason)

    if fmt == "csv":  # CSV lines cannot hold a line break; JSON escapes it
        for it in todo:
            if "\n" in it.key or "\r" in it.key:
                fail(it.key, "the file name contains a line break, which CSV lines cannot hold; use --format jsonl")
        todo = [it for it in todo if "\n" not in it.key and "\r" not in it.key]
    bar = tqdm(
        total=len(todo),
        unit="img",
        desc="captioning",
        disable=(None if progress is None else not progress),
        dynamic_ncols=True,
        file=sys.stderr,
    )
    start = time.perf_counter()
    try:
        stream = caption_stream(
            model,
            todo,
            batch_size=batch_size,
            workers=workers,
            beam_size=beam_size,
            max_length=max_length,
            length_penalty=length_penalty,
        )
        for item, result, reason in stream:
            bar.update(1)
            if result is None:
                fail(item.key, reason or "unknown error")
                bar.set_postfix(failed=failed, refresh=False)
                continue
            record = {"file": item.key, "caption": result.caption, "score": round(result.score, 4)}
            writer.write(record)
            done += 1
            if on_result is not None:
                on_result(record)
    finally:
        bar.close()
        writer.close()
        err_writer.close()
    seconds = time.perf_counter() - start
    if failed == 0 and not sharded:
        errors.unlink(missing_ok=True)  # an empty errors file would only confuse
    return FolderSummary(
        found=found,
        done=done,
        skipped=skipped,
        failed=failed,
        seconds=seconds,
        out=str(out_file),
        errors=str(err_file),
        rank=rank,
        world_size=world_size,
    )


# ---------------------------------------------------------------------------- sharding
def merge_parts(
    out: str | os.PathLike,
    errors: str | os.PathLike,
    world_size: int,
    fmt: str,
    order: Sequence[str] = (),
) -> int:
    """Merge the ``world_size`` part files (and any earlier ``out``) into ``out``.

    Records are deduplicated by file (the earliest wins) and sorted in ``order`` (the
    walk's sorted keys; unknown keys go last, by name). The merged file is written
    beside ``out`` and renamed over it, so it is never seen half-written; then the parts
    are removed. The errors parts are concatenated into ``errors`` (removed when empty).
    Returns the number of records in ``out``.
    """
    out, errors = Path(out), Path(errors)
    parts = [part_path(out, r, world_size) for r in range(world_size)]
    sources = ([out] if out.exists() else []) + [p for p in parts if p.exists()]
    by_key: dict[str, dict] = {}
    for src in sources:
        for rec in read_records(src, fmt):
            by_key.setdefault(rec["file"], rec)
    rank_of = {k: i for i, k in enumerate(order)}
    keys = sorted(by_key, key=lambda k: (rank_of.get(k, len(rank_of)), k))
    tmp = out.with_name(f".{out.name}.merging")
    with open(tmp, "wb") as f:
        if fmt == "csv":
            f.write(_encode_line(dict(zip(CSV_HEADER, CSV_HEADER)), "csv"))
        for k in keys:
            f.write(_encode_line(by_key[k], fmt))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    for p in parts:
        p.unlink(missing_ok=True)

    err_parts = [part_path(errors, r, world_size) for r in range(world_size)]
    lines: list[bytes] = []
    for p in err_parts:
        if p.exists():
            lines.extend(ln + b"\n" for ln in p.read_bytes().split(b"\n") if ln.strip())
    if lines:
        tmp = errors.with_name(f".{errors.name}.merging")
        tmp.write_bytes(b"".join(sorted(lines, key=lambda ln: json.loads(ln).get("path", ""))))
        os.replace(tmp, errors)
    else:
        errors.unlink(missing_ok=True)
    for p in err_parts:
        p.unlink(missing_ok=True)
    return len(keys)


@dataclass(frozen=True)
class DistEnv:
    """The ``torchrun`` environment: rank, world size and local rank of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: dict | None = None) -> DistEnv:
        env = os.environ if environ is None else environ
        try:
            return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
        except ValueError:
            raise CaptionerError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def run_sharded(
    model: Captioner, paths: Sequence[str | os.PathLike], out: str | os.PathLike, env: DistEnv, **kwargs
) -> FolderSummary:
    """:func:`caption_folder` on this rank's shard, then (rank 0) the merge.

    Ranks meet through ``torch.distributed`` (gloo, which works on CPU and GPU machines):
    a barrier after captioning so rank 0 merges only complete parts, and a sum of the
    counts so rank 0 reports the whole run. The barrier waits up to a week, since ranks
    with slow shards may finish hours apart.
    """
    import datetime

    import torch.distributed as dist

    if not env.distributed:
        return caption_folder(model, paths, out, **kwargs)
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size, timeout=datetime.timedelta(days=7))
    try:
        if env.rank != 0:
            kwargs["progress"] = False
        summary = caption_folder(model, paths, out, rank=env.rank, world_size=env.world_size, **kwargs)
        counts = torch.tensor([summary.done, summary.skipped, summary.failed], dtype=torch.float64)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        seconds = torch.tensor([summary.seconds], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        dist.barrier()
        fmt = format_for(out, kwargs.get("fmt"))
        errors = kwargs.get("errors") or default_errors_path(out)
        if env.rank == 0:
            order = [it.key for it in find_images(paths, recursive=kwargs.get("recursive", False))[0]]
            merge_parts(out, errors, env.world_size, fmt, order)
        dist.barrier()  # nobody returns before the merged file exists
        return FolderSummary(
            found=summary.found,
            done=int(counts[0]),
            skipped=int(counts[1]),
            failed=int(counts[2]),
            seconds=float(seconds[0]),
            out=str(out),
            errors=str(errors),
            rank=env.rank,
            world_size=env.world_size,
            merged=True,
        )
    finally:
        if own_group:
            dist.destroy_process_group()
