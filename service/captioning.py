"""The captioning engine behind ``POST /v1/captions``: uploads in, one result per image out.

For every image of a request::

    bytes --(decode pool thread)--> header probe (pixel limit) -> decode -> preprocess (3, H, W)
          --(batcher queue)--> worker thread: model.encode + model.generate on a batch
          --> CaptionResult back to this request

Decoding runs in a small thread pool and the model in the batcher's thread, so the event
loop only moves bytes. A bad image becomes an error entry for that image alone.
Admission control, in two steps: before its body is read, a request must find the queue
not full and its body's size must fit in ``max_buffered_bytes`` (:meth:`CaptionService.reserve_body`,
called by :mod:`service.admission`); once its images are known, all of them must fit in
``queue_size`` (images accepted and not yet finished). Otherwise 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from captioner import pipeline
from captioner.decode_budget import DecodePool, DecodeTimeout
from captioner.errors import ImageLoadError
from captioner.fair_executor import FairExecutor
from captioner.images import load_image
from captioner.options import LABELS, CaptionOptions
from captioner.runtime.captioner import Captioner, CaptionerBase

from .batcher import Batcher, BatcherStopped
from .errors import APIError, image_error
from .metrics import Metrics
from .settings import Settings
from .uploads import Upload

log = logging.getLogger("service")


@dataclass(frozen=True)
class GenerationOptions:
    """What a batch must share: images with equal options run together."""

    beam_size: int
    max_length: int
    # ImageNet labels to return per image; every batch computes the most (captioner.options.LABELS),
    # so requests asking for different numbers still share a batch.
    labels: int = field(default=0, compare=False)
    explain: bool = False  # per-word attention maps (attention models); such requests batch together
    length_penalty: float = 0.0  # beam search's GNMT length penalty (captioner.options.LENGTH_PENALTY)
    no_repeat_ngram_size: int | None = None  # None: the decoder's default; 0: off
    num_captions: int = 1  # n-best: the K best beams per image (at most beam_size)


@dataclass
class ItemResult:
    """The outcome for one image: a caption, or an error with its HTTP status."""

    index: int
    filename: str | None
    caption: str | None = None
    score: float | None = None
    time_ms: float = 0.0
    batch_size: int | None = None
    error: str | None = None
    detail: str | None = None
    status: int = 200
    confidence: float | None = None  # how far to trust the caption (captioner.trust)
    in_domain: bool | None = None
    domain_distance: float | None = None
    domain_threshold: float | None = None  # in domain up to this distance
    candidates: list[dict[str, Any]] | None = None  # n-best: [{"caption", "score", "confidence"}], best first
    labels: list[dict[str, Any]] | None = None  # [{"name", "probability"}], when asked for
    attention: list[dict[str, Any]] | None = None  # per word: {"word", "attention", "peak"}, with explain


def _stamp_time(item: ItemResult, start: float, _future: object) -> None:
    item.time_ms = (time.monotonic() - start) * 1000.0


def _lane_model(model: CaptionerBase, lanes: int) -> CaptionerBase | None:
    """The model a lane runs while another lane's batch runs too: its own encoder session on
    threads / lanes threads (None with one lane, on CUDA, or with fewer threads than lanes)."""
    if lanes < 2 or not isinstance(model, Captioner) or model.encoder.threads < lanes:
        return None
    return model.with_encoder_threads(model.encoder.threads // lanes)


class CaptionService:
    """Owns the model, the decode pool and the batcher of one app."""

    def __init__(self, model: CaptionerBase, settings: Settings, metrics: Metrics) -> None:
        self.model = model
        self.settings = settings
        self.metrics = metrics
        self.default_max_length = model.max_length
        # Requests take turns for the decode threads (a DECODE_GROUP each: service.client_limits).
        self._pool = FairExecutor(settings.decode_workers, thread_name_prefix="captioner-decode")
        # The pool's threads wait on decode processes that are killed when a decode outlives
        # its request (captioner.decode_budget); preprocessing stays in the threads.
        self._decoders = (
            DecodePool(workers=settings.decode_workers, budget_s=settings.request_timeout_s)
            if settings.decode_in == "processes"
            else None  # decode_in="threads": load_image in the pool's threads, no budget
        )
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_s,
            on_batch=metrics.observe_batch,
            lanes=settings.lanes,
        )
        metrics.track_queue(lambda: self.batcher.depth)
        self._beside = _lane_model(model, settings.lanes)
        self._admitted = 0  # images accepted and not yet finished
        self._buffered = 0  # request-body bytes reserved by requests being read or served
        self._lock = threading.Lock()
        self.draining = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.batcher.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Refuse new work, finish what is queued, release the threads."""
        self.draining = True
        self.batcher.stop(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._decoders is not None:
            self._decoders.close()

    @property
    def ready(self) -> bool:
        return not self.draining and self.batcher.running

    # ------------------------------------------------------------------ options
    def options(
        self,
        beam_size: int | None,
        max_length: int | None,
        labels: int = 0,
        explain: bool = False,
        length_penalty: float = 0.0,
        no_repeat_ngram_size: int | None = None,
        num_captions: int = 1,
    ) -> GenerationOptions:
        """A request's generation options with this server's defaults filled in. The values
        were range-checked by the router (``service.params``, 422 naming the range) before
        the body was read."""
        s = self.settings
        beam = s.default_beam_size if beam_size is None else beam_size
        length = min(self.default_max_length, s.max_length_limit) if max_length is None else max_length
        return GenerationOptions(beam, length, labels, explain, length_penalty, no_repeat_ngram_size, num_captions)

    # ------------------------------------------------------------------ admission
    def _admit(self, n: int) -> None:
        with self._lock:
            # While draining, requests are still accepted (a load balancer may not have seen
            # /readyz turn 503 yet); only a stopped batcher refuses.
            if not self.batcher.running:
                raise APIError(
                    503, "not_ready", "the service is shutting down; retry on another instance", {"Retry-After": "1"}
                )
            if self._admitted + n > self.settings.queue_size:
                self.metrics.rejections.inc()
                wait = max(1, min(60, math.ceil(self.batcher.estimated_wait_s(n))))
                raise APIError(
                    503,
                    "queue_full",
                    f"the server is busy ({self._admitted} images queued, "
                    f"room for {self.settings.queue_size}); retry in {wait} s",
                    {"Retry-After": str(wait)},
                )
            self._admitted += n

    def _release(self, n: int = 1) -> None:
        with self._lock:
            self._admitted -= n

    def _busy(self, code: str, why: str, n_images: int) -> APIError:
        self.metrics.rejections.inc()
        wait = max(1, min(60, math.ceil(self.batcher.estimated_wait_s(n_images))))
        return APIError(503, code, f"{why}; retry in {wait} s", {"Retry-After": str(wait)})

    def reserve_body(self, n_bytes: int) -> None:
        """Before a request body is read (service.admission): 503 when the queue is full, or
        when ``n_bytes`` more would pass ``max_buffered_bytes`` across all requests."""
        s = self.settings
        with self._lock:
            if self._admitted >= s.queue_size:
                raise self._busy(
                    "queue_full", f"the server is busy ({self._admitted} images queued, room for {s.queue_size})", 1
                )
            if self._buffered + n_bytes > s.max_buffered_bytes:
                raise self._busy(
                    "busy",
                    f"the server is receiving {self._buffered} bytes of other uploads and holds at most "
                    f"{s.max_buffered_bytes}; this body of {n_bytes} bytes does not fit",
                    1,
                )
            self._buffered += n_bytes

    def release_body(self, n_bytes: int) -> None:
        with self._lock:
            self._buffered -= n_bytes

    @property
    def buffered_bytes(self) -> int:
        """Request-body bytes reserved now (service.admission)."""
        return self._buffered

    # ------------------------------------------------------------------ the pipeline
    def _decode(self, upload: Upload, label: str, deadline: float) -> np.ndarray:
        """Runs in the decode pool: bytes -> (3, H, W), or ImageLoadError."""
        budget_s = deadline - time.monotonic()  # a decode may last as long as its request has left
        if budget_s <= 0:  # the request gave up while this waited for a thread
            raise TimeoutError
        if self._decoders is None:
            loader: pipeline.Loader = load_image
        else:
            crop = getattr(self.model.preprocessing, "resize_spec", None)  # the workers crop: less through the pipe
            loader = functools.partial(self._decoders.load, budget_s=budget_s, crop=crop)
        max_pixels = min(self.settings.max_pixels, upload.max_pixels or self.settings.max_pixels)  # as priced
        limits = pipeline.Limits(max_pixels=max_pixels, max_bytes=self.settings.max_body_bytes)
        try:
            return pipeline.prepare(
                upload.data, self.model.preprocessing, name=label, limits=limits, loader=loader
            )  # (3, H, W)
        except DecodeTimeout as e:
            log.warning(
                "stopped decoding %s after %.1f s, its request's time left (worker replaced)", label, e.budget_s
            )
            raise

    def _run_batch(self, x: np.ndarray, opts: GenerationOptions) -> list:
        """Runs in the batcher thread: (B, 3, H, W) -> B CaptionResults."""
        # Alone, a batch has every encoder thread (one lane's latency); beside another lane's
        # batch, its share of them (the lanes' throughput).
        model = self._beside if self._beside is not None and self.batcher.busy > 1 else self.model
        started = model.encode_started(x)  # (B, F) and the decoder's start, from one encoder call
        options = CaptionOptions(
            beam_size=opts.beam_size,
            max_length=opts.max_length,
            length_penalty=opts.length_penalty,
            no_repeat_ngram_size=opts.no_repeat_ngram_size,
            labels=int(LABELS.high),
            num_captions=opts.num_captions,
        )
        results = model.generate(started, options, attention=opts.explain)
        if not opts.explain:
            return results
        from captioner.explain import word_maps

        return list(zip(results, word_maps(model, results)))

    async def _decode_one(self, index: int, upload: Upload, deadline: float) -> tuple[ItemResult, np.ndarray | None]:
        """Decode one upload off the event loop; a bad image becomes an error result."""
        loop = asyncio.get_running_loop()
        label = upload.filename or f"image {index + 1}"
        item = ItemResult(index=index, filename=upload.filename)
        try:
            x = await loop.run_in_executor(self._pool, self._decode, upload, label, deadline)  # (3, H, W)
            return item, x
        except ImageLoadError as e:
            item.status, item.error = image_error(e)
            item.detail = str(e)
            return item, None

    async def _run(self, uploads: list[Upload], opts: GenerationOptions, deadline: float) -> list[ItemResult]:
        start = time.monotonic()
        decoded = await asyncio.gather(*(self._decode_one(i, u, deadline) for i, u in enumerate(uploads)))
        good = [(item, x) for item, x in decoded if x is not None]
        # One request's images enter the queue together, so they can share a batch.
        futures = self.batcher.submit_many([x for _, x in good], opts) if good else []
        for (item, _), f in zip(good, futures):  # stamp each image's own finishing time
            f.add_done_callback(functools.partial(_stamp_time, item, start))
        try:
            outcomes = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        except asyncio.CancelledError:
            for f in futures:  # cancelled futures are skipped when their batch is formed
                f.cancel()
            raise
        for (item, _), outcome in zip(good, outcomes):
            if isinstance(outcome, BaseException):  # the model failed on this batch: a server fault
                item.status, item.error = 500, "inference_failed"
                item.detail = (
                    f"{item.filename or f'image {item.index + 1}'}: the model failed on its batch "
                    f"({type(outcome).__name__}); this has been logged"
                )
                continue
            result, info = outcome
            if opts.explain:
                result, item.attention = result
            item.caption, item.score, item.batch_size = result.caption, result.score, info.size
            item.confidence, item.in_domain = result.confidence, result.in_domain
            item.domain_distance, item.domain_threshold = result.domain_distance, result.domain_threshold
            if opts.num_captions > 1:
                item.candidates = [
                    {"caption": c.caption, "score": round(c.score, 4), "confidence": c.confidence}
                    for c in (result.candidates or [result])
                ]
            if opts.labels and result.labels:
                item.labels = [label.to_dict() for label in result.labels[: opts.labels]]
        now = time.monotonic()
        items = [item for item, _ in decoded]
        for item in items:
            if not item.time_ms:
                item.time_ms = (now - start) * 1000.0
            if item.error:
                self.metrics.image_errors.labels(item.error).inc()
            else:
                self.metrics.images.inc()
        return items

    async def caption(self, uploads: list[Upload], opts: GenerationOptions, timeout_s: float) -> list[ItemResult]:
        """Caption every upload; per-image errors are results, a timeout is APIError 504."""
        self._admit(len(uploads))
        deadline = time.monotonic() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await self._run(uploads, opts, deadline)
        except TimeoutError:
            raise APIError(
                504,
                "timeout",
                f"captioning took longer than {timeout_s:g} s; retry later, send fewer "
                "images per request, or ask the operator to raise the request timeout",
            ) from None
        except BatcherStopped:
            raise APIError(
                503, "not_ready", "the service is shutting down; retry on another instance", {"Retry-After": "1"}
            ) from None
        finally:
            self._release(len(uploads))  # also when timed out or the client went away

    def describe(self) -> dict[str, Any]:
        """/v1/model: the model's facts and this service's limits."""
        s = self.settings
        info = self.model.describe()
        info["service"] = {
            "max_batch_size": s.max_batch_size,
            "max_wait_ms": s.max_wait_ms,
            "queue_size": s.queue_size,
            "max_files": s.max_files,
            "max_body_bytes": s.max_body_bytes,
            "max_pixels": s.max_pixels,
            "request_timeout_s": s.request_timeout_s,
            "max_beam_size": s.max_beam_size,
            "max_length_limit": s.max_length_limit,
            "default_beam_size": s.default_beam_size,
            "default_max_length": min(self.default_max_length, s.max_length_limit),
            "threads": self.model.runtime_status().get("threads"),
            "lanes": s.lanes,
            "decode_in": s.decode_in,
            "auth_required": s.api_key is not None,
        }
        return info
