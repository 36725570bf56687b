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
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

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
        try:
            service.reserve_body(n)
        except APIError as e:
            headers = dict(e.headers)
            if headers_in.get("expect", "").lower() == "100-continue":
                # That client will not send its body, so the connection cannot carry another
                # request. Any other client's body is read past and dropped by the HTTP parser
                # (never buffered), and its connection stays open: closing it with the body
                # unread would reset it, and the client might never see this answer.
                headers["Connection"] = "close"
            await error_response(e.status, e.code, e.detail, headers)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            service.release_body(n)
