"""Admission before the body: an upload is refused (503 + Retry-After) before a byte of it is read.

Uploads are read into memory whole (the decoder needs every byte), so without a gate in
front, N concurrent uploads cost N bodies of memory even when the queue behind them is full
and every one of them is going to be refused. :class:`AdmissionMiddleware` runs before the
app reads anything for ``POST /v1/captions``:

1. when the queue is full (``queue_size`` images accepted and not finished), 503
   ``queue_full`` at once;
2. otherwise the body's size is reserved from a budget shared by all requests
   (``max_buffered_bytes``): the declared ``Content-Length``, or ``max_body_bytes`` for a
   chunked body whose size is not known in advance. A body that does not fit gets 503
   ``busy``; the reservation is returned when the request ends, however it ends.

Only then is the app called, so a client that sent ``Expect: 100-continue`` (curl does for
bodies over 1 MB) gets the 503 instead of ``100 Continue`` and never sends its body. A
request whose ``Content-Length`` is invalid or over ``max_body_bytes`` reserves nothing:
the upload reader answers it 400 or 413 without reading the body.

One client address may hold at most ``max_client_buffered_bytes`` of the budget (429
``client_busy``, :mod:`service.client_limits`), and an admitted body must keep arriving at
``min_upload_bytes_per_s`` after a grace of ``header_timeout_s`` (else 408 ``body_too_slow``
and the reservation is returned), so connections that declare a large body and send it
slowly, or not at all, cannot hold the budget for the whole ``body_timeout_s``.
"""

from __future__ import annotations

import time

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, error_response

UPLOAD_PATHS = frozenset({"/v1/captions"})


def body_reservation(headers: Headers, max_body_bytes: int) -> int | None:
    """Bytes to reserve for a request body: the declared length, ``max_body_bytes`` when none is
    declared (chunked), None when the declared length is invalid or over the limit."""
    declared = headers.get("content-length")
    if declared is None:
        return max_body_bytes if "chunked" in headers.get("transfer-encoding", "").lower() else 0
    if not declared.isascii() or not declared.isdigit():
        return None
    n = int(declared)
    return n if n <= max_body_bytes else None


class AdmissionMiddleware:
    """Pure ASGI middleware: the queue and buffered-bytes checks of the module docstring.

    It finds the running :class:`service.captioning.CaptionService` on ``app.state.service``;
    before the model is loaded it lets requests through (the app answers 503 ``not_ready``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        app = scope.get("app")
        service = getattr(getattr(app, "state", None), "service", None)
        headers_in = Headers(scope=scope)
        n = None if service is None else body_reservation(headers_in, service.settings.max_body_bytes)
        if service is None or n is None:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("",))[0]
        limits = getattr(getattr(app, "state", None), "client_limits", None)
        try:
            if limits is not None:
                limits.body_bytes.take(client, n)  # 429 client_busy: this client's share is held
            try:
                service.reserve_body(n)
            except APIError:
                if limits is not None:
                    limits.body_bytes.give_back(client, n)
                raise
        except APIError as e:
            headers = dict(e.headers)
            if headers_in.get("expect", "").lower() == "100-continue":
                # That client will not send its body, so the connection cannot carry another
                # request. Any other client's body is read past and dropped by the HTTP parser
                # (never buffered), and its connection stays open: closing it with the body
                # unread would reset it, and the client might never see this answer.
                headers["Connection"] = "close"
            scope["route_label"] = scope["path"]  # refused before routing: the metrics still name the route
            await error_response(e.status, e.code, e.detail, headers)(scope, receive, send)
            return
        try:
            s = service.settings
            rate = getattr(s, "min_upload_bytes_per_s", 0)
            paced = receive if not rate or not n else min_rate_receive(receive, rate, s.header_timeout_s)
            await self.app(scope, paced, send)
        finally:
            service.release_body(n)
            if limits is not None:
                limits.body_bytes.give_back(client, n)


def min_rate_receive(receive: Receive, rate: int, grace_s: float) -> Receive:
    """``receive`` for a request body that must keep up ``rate`` bytes/s after ``grace_s``:
    once it falls behind (``grace_s + received / rate`` seconds after the first call) the
    wait is cut with APIError 408 ``body_too_slow`` and the connection closed, so a client
    that declares a large body and trickles it cannot hold its reservation for the whole
    ``body_timeout_s``."""
    start: float | None = None
    received = 0
    done = False

    async def paced() -> Message:
        nonlocal start, received, done
        if done:
            return await receive()
        now = time.monotonic()
        if start is None:
            start = now
        left = start + grace_s + received / rate - now
        try:
            if left <= 0:
                raise TimeoutError
            with anyio.fail_after(left):
                message = await receive()
        except TimeoutError:
            raise APIError(
                408,
                "body_too_slow",
                f"the request body arrived slower than {rate} bytes/s ({received} bytes in "
                f"{time.monotonic() - start:.1f} s); the server does not hold room for uploads that slow",
                {"Connection": "close"},
            ) from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            done = not message.get("more_body", False)
        else:
            done = True
        return message

    return paced
