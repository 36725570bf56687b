"""Folder captioning across ``torchrun`` processes (``WORLD_SIZE`` > 1).

Rank *r* of *N* captions the files ``r, r+N, r+2N, ...`` of the sorted list into its own
part file (``captions.part-r-of-N.jsonl``); when every rank is done, rank 0 merges the
parts (and any earlier merged output) into ``--out`` in sorted order and removes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CaptionerError
from .fsio import atomic_write, atomic_write_bytes
from .outputs import CSV_HEADER, default_errors_path, encode_line, format_for, read_records
from .walk import find_images

if TYPE_CHECKING:  # pragma: no cover
    from .folder import FolderSummary
    from .model import Captioner

__all__ = ["DistEnv", "merge_parts", "part_path", "run_sharded"]


def part_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """``captions.jsonl`` -> ``captions.part-1-of-4.jsonl`` for rank 1 of 4."""
    path = Path(path)
    return path.with_name(f"{path.stem}.part-{rank}-of-{world_size}{path.suffix}")


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

    def write(f: Any) -> None:
        if fmt == "csv":
            f.write(encode_line(dict(zip(CSV_HEADER, CSV_HEADER)), "csv"))
        for k in keys:
            f.write(encode_line(by_key[k], fmt))

    atomic_write(out, write)
    for p in parts:
        p.unlink(missing_ok=True)

    err_parts = [part_path(errors, r, world_size) for r in range(world_size)]
    lines: list[bytes] = []
    for p in err_parts:
        if p.exists():
            lines.extend(ln + b"\n" for ln in p.read_bytes().split(b"\n") if ln.strip())
    if lines:
        atomic_write_bytes(errors, b"".join(sorted(lines, key=lambda ln: json.loads(ln).get("path", ""))))
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

    import torch
    import torch.distributed as dist

    from .folder import FolderSummary, caption_folder

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
