"""Per-request and per-client budgets: pixels to decode and request-body bytes to buffer.

The shared limits (``queue_size``, ``max_buffered_bytes``, the decode workers) protect the
process, but one client can fill any of them for everyone: sixteen lossless WebP images
of 40 megapixels fit in 28 kB and take seconds to decode, and eight connections that
declare a 32 MiB body and send nothing hold the whole body budget. So:

* **pixels per request**: each upload is priced from its header before anything is
  decoded (:func:`price_uploads`, with :func:`captioner.image_checks.declared_size`); a
  request whose images add up to more than ``max_request_pixels`` gets 413
  ``too_many_pixels``, and each decode is then held to the size it was priced at;
* **pixels per client**: the pixels of one client address's requests in flight may not
  pass ``max_client_pixels`` (429 ``client_busy`` + Retry-After);
* **body bytes per client**: one client address may hold at most
  ``max_client_buffered_bytes`` of ``max_buffered_bytes`` (429 ``client_busy`` before
  the body is read; :mod:`service.admission`).

A client is its peer address (``scope["client"]``): behind a proxy every client is the
proxy, so these shares become process-wide caps there (the proxy's own per-client limits
take their place; docs/reliability.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio
from starlette.requests import Request

from captioner.fair_executor import DECODE_GROUP
from captioner.image_checks import declared_size
from captioner.images import ACCEPTED_FORMATS, sniff_format

from .errors import APIError
from .uploads import Upload

if TYPE_CHECKING:
    from .captioning import CaptionService, GenerationOptions, ItemResult


class ClientLedger:
    """How much of one resource each client holds, under a per-client ``limit``."""

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit
        self.what = what  # "pixels", "bytes of request bodies"
        self.setting = setting  # the setting that raises the limit, named in the refusal
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def held(self, client: str) -> int:
        with self._lock:
            return self._held.get(client, 0)

    def take(self, client: str, n: int) -> None:
        """Add ``n`` to what ``client`` holds, or APIError 429 ``client_busy`` when it would pass the limit."""
        with self._lock:
            held = self._held.get(client, 0)
            if held + n > self.limit:
                raise APIError(
                    429,
                    "client_busy",
                    f"this client already has {held} {self.what} in requests being served; {n} more would pass "
                    f"the limit of {self.limit} per client ({self.setting}); retry when they are answered",
                    {"Retry-After": "1"},
                )
            self._held[client] = held + n

    def give_back(self, client: str, n: int) -> None:
        with self._lock:
            left = self._held.get(client, 0) - n
            if left > 0:
                self._held[client] = left
            else:
                self._held.pop(client, None)

    @contextmanager
    def hold(self, client: str, n: int) -> Iterator[None]:
        """:meth:`take` now, :meth:`give_back` when the block ends, however it ends."""
        self.take(client, n)
        try:
            yield
        finally:
            self.give_back(client, n)


class ClientLimits:
    """The two per-client ledgers of one app (kept on ``app.state.client_limits``)."""

    def __init__(self, max_client_pixels: int, max_client_buffered_bytes: int) -> None:
        self.pixels = ClientLedger(max_client_pixels, "pixels", "max_client_pixels")
        self.body_bytes = ClientLedger(
            max_client_buffered_bytes, "bytes of request bodies", "max_client_buffered_bytes"
        )


def price_upload(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(pixels charged, the most pixels its decode may produce) for one upload, from its header.

    A declared size within ``max_pixels`` is charged and becomes the decode's own limit (a
    file whose header lies is refused, never decoded bigger). A declared size over the
    limit, and bytes no accepted format claims, cost nothing: the decoder refuses them
    from the header. An accepted format whose size could not be read is charged the most
    an image may have."""
    size = declared_size(data)
    if size is not None:
        pixels = size[0] * size[1]
        return (pixels, max(1, pixels)) if pixels <= max_pixels else (0, max_pixels)
    fmt = sniff_format(data)
    claimed = fmt is not None and (fmt in ACCEPTED_FORMATS or fmt == "WebP")
    return (max_pixels if claimed else 0), max_pixels


def price_uploads(uploads: list[Upload], max_pixels: int, max_request_pixels: int) -> int:
    """Price every upload (setting its ``max_pixels``) and return the request's total, or
    APIError 413 ``too_many_pixels`` when it is over ``max_request_pixels``."""
    total = 0
    for upload in uploads:
        charged, upload.max_pixels = price_upload(upload.data, max_pixels)
        total += charged
    if total > max_request_pixels:
        raise APIError(
            413,
            "too_many_pixels",
            f"the {len(uploads)} image(s) of this request declare {total} pixels in all; the limit is "
            f"{max_request_pixels} per request (max_request_pixels): send fewer or smaller images per request",
        )
    return total


async def caption_within_budgets(
    request: Request, service: CaptionService, uploads: list[Upload], opts: GenerationOptions, timeout_s: float
) -> list[ItemResult]:
    """``service.caption`` once the request's pixels are priced (413 over ``max_request_pixels``)
    and its client's pixel share holds them (429), with this request's decodes taking turns
    with other requests' (:data:`captioner.fair_executor.DECODE_GROUP`)."""
    s = service.settings
    # A thread: a hostile header costs up to a few hundred thousand bounded steps to walk.
    total = await anyio.to_thread.run_sync(price_uploads, uploads, s.max_pixels, s.max_request_pixels)
    limits: ClientLimits | None = getattr(request.app.state, "client_limits", None)
    client = request.client.host if request.client else ""
    group = DECODE_GROUP.set(object())  # one group per request: copied into the decode tasks
    try:
        if limits is None:
            return await service.caption(uploads, opts, timeout_s)
        with limits.pixels.hold(client, total):
            return await service.caption(uploads, opts, timeout_s)
    finally:
        DECODE_GROUP.reset(group)
