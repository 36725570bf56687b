"""Caption a whole folder of images into a resumable JSONL or CSV file.

    captioner caption photos/ --out captions.jsonl --recursive

The run has three stages, pipelined so that the model never waits for the disk:

1. **walk**: :func:`find_images` lists the files with an image extension (hidden files
   and folders skipped, symbolic-link loops detected by the real path of every folder
   entered) and sorts them, so every run sees the same list;
2. **decode**: a pool of ``workers`` threads reads, decodes and preprocesses images ahead
   of the model through a bounded queue (Pillow and numpy release the GIL while they
   decode and resize, so threads scale without pickling tensors between processes);
3. **caption**: the main thread stacks decoded images into batches and runs the encoder;
   one more thread runs the decoder (search, trust, labels) on a batch's features while the
   encoder works on the next batch (:func:`overlapped_stream`), and one line per image is
   appended to the output as soon as its batch is done.

Crash safety: every line is written with a single ``write`` call on an unbuffered file,
so a killed run leaves at most one torn line at the end (only on power loss or a full
disk). A rerun with the same ``--out`` first cuts any partial trailing line, reads the
files already captioned and skips them. Files that cannot be captioned (corrupt, empty,
not an image, unreadable) go to an errors file, one JSON object per line with ``file`` and
``reason`` (and ``path``, the old name of ``file``, for a release); that file describes the latest run, because failed files are retried each time.

Beyond one machine: ``--engine ray`` (:mod:`captioner.engines.ray_engine`, docs/scale.md)
writes the same rows from a Ray cluster.

Where the parts live: walking in :mod:`captioner.walk`, decoding and batching in
:mod:`captioner.pipeline` (shared with evaluation and the service), the output and errors
files in :mod:`captioner.outputs`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CaptionerError
from .options import DEFAULT_LABELS, CaptionOptions
from .outputs import FORMATS, LineWriter, default_errors_path, format_for, read_records
from .pipeline import Failure, ImageItem, caption_stream, check_batching, ordered_map, try_prepare
from .walk import FileProblem, find_images

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .runtime.captioner import CaptionerBase as Captioner
    from .runtime.results import CaptionResult

__all__ = [
    "FORMATS",
    "FileProblem",
    "FolderSummary",
    "ImageItem",
    "LineWriter",
    "caption_folder",
    "caption_stream",
    "default_errors_path",
    "find_images",
    "format_for",
    "overlapped_stream",
    "read_records",
]

Row = tuple[ImageItem, "CaptionResult | None", "str | None"]


def overlapped_stream(
    model: Captioner,
    items: Iterable[ImageItem],
    *,
    batch_size: int = 16,
    workers: int = 2,
    options: CaptionOptions | None = None,
) -> Iterator[Row]:
    """:func:`captioner.pipeline.caption_stream` with the decoder on its own thread: a batch's
    captions are generated while the encoder runs on the next batch, so the core the search
    leaves free is not idle while the encoder waits for it (measured +6-9 % images/s on two
    cores). The same rows, ``(item, result, None)`` or ``(item, None, reason)``: the captions
    in input order, a file that cannot be prepared as soon as it is reached (so possibly
    before the captions of the batch before it)."""
    import numpy as np

    check_batching(batch_size, workers)
    opts = options or CaptionOptions()
    batch: list[tuple[ImageItem, np.ndarray]] = []
    waiting: tuple[list[ImageItem], Future] | None = None  # the batch being captioned

    def prep(item: ImageItem) -> np.ndarray | Failure:
        return try_prepare(item.path, model.preprocessing, name=item.key)

    def collect() -> Iterator[Row]:
        nonlocal waiting
        if waiting is not None:
            keys, future = waiting
            waiting = None
            yield from ((it, res, None) for it, res in zip(keys, future.result()))

    decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="caption")
    try:
        for item, got in ordered_map(prep, items, workers, max(2 * batch_size, 4 * workers)):
            if isinstance(got, Failure):
                yield item, None, got.reason
                continue
            batch.append((item, got))  # (3, S, S)
            if len(batch) >= batch_size:
                features = model.encode(np.stack([x for _, x in batch]))  # (B, F) or (B, N, C)
                yield from collect()  # the previous batch's captions, generated meanwhile
                waiting = ([it for it, _ in batch], decoder.submit(model.generate, features, opts))
                batch = []
        if batch:
            features = model.encode(np.stack([x for _, x in batch]))
            yield from collect()
            waiting = ([it for it, _ in batch], decoder.submit(model.generate, features, opts))
        yield from collect()
    finally:
        decoder.shutdown(wait=True, cancel_futures=True)


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
    extra: dict = field(default_factory=dict)
    out_of_domain: int = 0  # images of this run that look unlike the training data

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_second": round(self.images_per_second, 2)}

    def line(self) -> str:
        text = f"captioned {self.done}, skipped {self.skipped} (already in {self.out}), failed {self.failed}"
        if self.failed:
            text += f" (see {self.errors})"
        text += f"; {self.seconds:.1f} s, {self.images_per_second:.1f} images/s"
        from .trust import out_of_domain_summary

        unlike = out_of_domain_summary([False] * self.out_of_domain + [True] * (self.done - self.out_of_domain))
        return text + (f"\n{unlike}" if unlike else "")


class _Failures:
    """The errors file of a run, counting what it lists."""

    def __init__(self, path: Path) -> None:
        self.writer = LineWriter(path, "jsonl")
        self.writer.open_fresh()
        self.count = 0

    def add(self, key: str, reason: str) -> None:
        # "file", as in the captions file; "path" is its old name, kept for a release
        self.writer.write({"file": key, "path": key, "reason": reason})
        self.count += 1


def _csv_safe(todo: list[ImageItem], failures: _Failures) -> list[ImageItem]:
    """CSV lines cannot hold a line break (JSON escapes it): such names fail with the reason."""
    keep = []
    for it in todo:
        if "\n" in it.key or "\r" in it.key:
            failures.add(it.key, "the file name contains a line break, which CSV lines cannot hold; use --format jsonl")
        else:
            keep.append(it)
    return keep


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
    progress: bool | None = None,
    on_result: Callable[[dict], None] | None = None,
    labels: int = DEFAULT_LABELS,
    no_repeat_ngram_size: int | None = None,
) -> FolderSummary:
    """Caption every image under ``paths`` into ``out`` (see the module docstring).

    ``progress``: ``None`` shows a bar when stderr is a terminal.
    """
    from tqdm import tqdm

    from .trust import result_fields

    check_batching(batch_size, workers)
    options = CaptionOptions(beam_size, max_length, length_penalty, no_repeat_ngram_size, labels)
    fmt = format_for(out, fmt)
    out = Path(out)
    errors = Path(errors) if errors is not None else default_errors_path(out)
    if out.resolve() == errors.resolve():
        raise CaptionerError(f"--errors and --out are the same file ({out}); pick another --errors")
    items, problems = find_images(paths, recursive=recursive)

    writer = LineWriter(out, fmt)
    done_keys = {r["file"] for r in writer.open_for_resume()}
    failures = _Failures(errors)
    todo = [it for it in items if it.key not in done_keys]
    skipped = len(items) - len(todo)
    for p in problems:
        failures.add(p.key, p.reason)
    if fmt == "csv":
        todo = _csv_safe(todo, failures)
    disable = None if progress is None else not progress
    bar = tqdm(total=len(todo), unit="img", desc="captioning", disable=disable, dynamic_ncols=True, file=sys.stderr)
    done = unlike = 0
    start = time.perf_counter()
    try:
        for item, result, reason in overlapped_stream(
            model, todo, batch_size=batch_size, workers=workers, options=options
        ):
            bar.update(1)
            if result is None:
                failures.add(item.key, reason or "unknown error")
                bar.set_postfix(failed=failures.count, refresh=False)
                continue
            record = {"file": item.key, "caption": result.caption, "score": round(result.score, 4)}
            record.update(result_fields(result))  # confidence, in_domain, domain_distance, labels
            writer.write(record)
            done += 1
            unlike += result.in_domain is False
            if on_result is not None:
                on_result(record)
    finally:  # an interrupted run too: an empty errors file would only confuse
        bar.close()
        writer.close()
        failures.writer.close()
        if failures.count == 0:
            errors.unlink(missing_ok=True)
    return FolderSummary(
        found=len(items),
        done=done,
        skipped=skipped,
        failed=failures.count,
        seconds=time.perf_counter() - start,
        out=str(out),
        errors=str(errors),
        out_of_domain=unlike,
    )
