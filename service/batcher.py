"""Dynamic batching: images from concurrent requests share one run of the model.

Requests put preprocessed images (``(3, H, W)`` tensors) into one queue, each with the
generation options it asked for, and get a :class:`concurrent.futures.Future` back. A
single worker thread takes images off the queue and runs them through the model
together, so the event loop never waits on the model and the model sees large batches
under load::

    request A ──┐                       ┌─> future A1
    request B ──┼─> queue ─> worker ────┼─> future B1   (one model.encode + generate
    request C ──┘   (FIFO)   thread     └─> future C1    per batch of compatible images)

How a batch is formed:

* The oldest waiting image picks the batch's options (beam size, max length); every
  waiting image with the same options joins it, oldest first, up to ``max_batch_size``.
  Images with other options keep their place for a later batch.
* If the worker was idle (the queue was empty when it looked), the batch runs at once:
  a lone request on a quiet server pays no batching delay.
* If the worker comes straight from another batch (there is load), a batch that is not
  full may wait up to ``max_wait_s`` for more compatible images.

Images whose future was cancelled (their request timed out or went away) are dropped
when their batch is formed. Stopping drains: everything already queued still runs.

``lanes`` worker threads may take batches from the one queue, so one batch's search (one
core) overlaps the next batch's encoder instead of leaving a core idle (``captioner serve
--lanes``); ``busy`` says how many batches run, so a batch can take every encoder thread
when it runs alone and its share beside another (service.captioning).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("captioner.service.batcher")


class QueueFull(Exception):
    """The batcher cannot take more images now."""


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new images."""


@dataclass
class BatchInfo:
    """Facts about the batch an image ran in (returned with its result)."""

    size: int  # images in the batch
    queue_s: float  # time this image waited in the queue
    model_s: float  # time the whole batch spent in the model


@dataclass
class _Item:
    x: np.ndarray  # (3, H, W)
    key: Hashable
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


RunBatch = Callable[[np.ndarray, Any], Sequence[Any]]  # (B, 3, H, W), options -> B results


class Batcher:
    """A FIFO queue of images and the ``lanes`` threads that run them through the model.

    ``run_batch(x, key)`` receives a stacked batch ``(B, 3, H, W)`` and the options key
    shared by its images and returns one result per image, in order.
    ``on_batch(size, seconds)`` is called after every batch (for metrics).
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 16,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "captioner-batcher",
        lanes: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if lanes < 1:
            raise ValueError("lanes must be >= 1")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = 0  # batches running
        self._ewma_batch_s: float | None = None  # smoothed seconds per batch, for Retry-After
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}" if lanes > 1 else name, daemon=True)
            for i in range(lanes)
        ]

    # ------------------------------------------------------------------ public API
    def start(self) -> Batcher:
        for t in self._threads:
            t.start()
        return self

    @property
    def lanes(self) -> int:
        return len(self._threads)

    def submit(self, x: np.ndarray, key: Hashable) -> Future:
        """Queue one image ``x`` (3, H, W) to run with options ``key``; returns its future."""
        item = _Item(x, key, Future())
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the service is shutting down")
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def submit_many(self, xs: Sequence[np.ndarray], key: Hashable) -> list[Future]:
        """Queue several images at once (one request's images), so they can share a batch."""
        items = [_Item(x, key, Future()) for x in xs]
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the service is shutting down")
            self._queue.extend(items)
            self._cond.notify()
        return [it.future for it in items]

    @property
    def busy(self) -> int:
        """Batches being run now (at most ``lanes``)."""
        return self._busy

    @property
    def depth(self) -> int:
        """Images waiting for the model (not counting the batch being run)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads) and not self._stopping

    def estimated_wait_s(self, extra_images: int = 0) -> float:
        """Rough time until ``extra_images`` more images could be served (for Retry-After)."""
        per_batch = self._ewma_batch_s if self._ewma_batch_s is not None else 0.5
        batches = math.ceil((self.depth + extra_images) / self.max_batch_size) + (1 if self._busy else 0)
        return batches * per_batch / self.lanes

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new images, run the ones already queued, stop the thread.
        Returns False when the thread was still running after ``timeout`` seconds."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # ------------------------------------------------------------------ the worker
    def _take(self, limit: int, key: Hashable) -> list[_Item]:
        """Remove up to ``limit`` queued items with options ``key`` (oldest first). Holds the lock."""
        taken: list[_Item] = []
        if limit <= 0:
            return taken
        keep: deque[_Item] = deque()
        while self._queue:
            item = self._queue.popleft()
            if len(taken) < limit and item.key == key:
                taken.append(item)
            else:
                keep.append(item)
        self._queue = keep
        return taken

    def _next_batch(self) -> list[_Item] | None:
        """Block until a batch is ready; None when stopping with an empty queue."""
        with self._cond:
            idle = False
            while not self._queue:
                if self._stopping:
                    return None
                idle = True
                self._cond.wait()
            key = self._queue[0].key
            batch = self._take(self.max_batch_size, key)
            if not idle and not self._stopping and self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s
                while len(batch) < self.max_batch_size and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    batch += self._take(self.max_batch_size - len(batch), key)
            self._busy += 1
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                # Drop images nobody waits for any more; mark the others running.
                live = [it for it in batch if it.future.set_running_or_notify_cancel()]
                if live:
                    self._run(live)
            finally:
                with self._cond:
                    self._busy -= 1

    def _run(self, items: list[_Item]) -> None:
        start = time.monotonic()
        try:
            x = np.stack([it.x for it in items])  # (B, 3, H, W)
            results = self.run_batch(x, items[0].key)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} images")
        except BaseException as e:  # one failed batch fails its own images, never the thread
            log.exception("batch of %d images failed", len(items))
            for it in items:
                it.future.set_exception(e)
            return
        seconds = time.monotonic() - start
        self._ewma_batch_s = seconds if self._ewma_batch_s is None else 0.8 * self._ewma_batch_s + 0.2 * seconds
        for it, result in zip(items, results):
            it.future.set_result((result, BatchInfo(len(items), start - it.enqueued, seconds)))
        if self.on_batch is not None:
            try:
                self.on_batch(len(items), seconds)
            except Exception:  # metrics must never break serving
                log.exception("on_batch callback failed")
