"""Connection guards in front of the HTTP parser: header size, header time, connection count.

uvicorn's httptools protocol (the fast C parser) has none of these: it buffers a request
head of any size (one never-ending header line grows the process one byte per byte sent,
before any API key is looked at), waits for a head forever, and accepts connections until
the process runs out of file descriptors. :class:`GuardedHttpToolsProtocol` adds:

* **a head size limit** (``max_header_bytes``: request line plus headers of one request).
  The bytes fed to the parser while a head is incomplete are counted after each read; past
  the limit the answer is 431 JSON and the connection is closed. The parser therefore
  never holds more than the limit plus one read (256 KiB).
* **a head time limit** (``header_timeout_s``): from the moment a connection opens, or its
  previous response ends, the next request head must be complete within it; else 408 JSON
  and close. This is what ends slowloris connections that send a header line every few
  seconds (uvicorn's own keep-alive timeout stops counting at the first byte).
* **a connection cap** (``max_connections``): a connection beyond it is answered 503 JSON
  with ``Retry-After`` and closed, and a warning is logged (at most once per
  ``LOG_EVERY_S`` seconds, with the count), so the process keeps file descriptors for its
  own work and says why clients are refused. ``PROBE_SLOTS`` connections beyond the cap
  are still read, for one request each: a health probe (``GET``/``HEAD`` of ``/healthz``
  or ``/readyz``) is answered, so an orchestrator does not restart a process that is only
  full; anything else gets the 503. Beyond those, the 503 comes at once.
* **a write timeout** (``write_timeout_s``): a response the client does not read fills
  the socket and then the transport's buffer (64 KiB), and the app waits to send more.
  When it has waited that long, the connection is dropped, so a client that asks for large
  files and never reads them holds memory and a connection for at most that long.

The body is guarded elsewhere (the size limit and ``body_timeout_s`` while it is read, and
the admission gate before it is read: :mod:`service.admission`). A proxy in front still
does what a single process cannot: per-client rate and connection limits (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("service")

LOG_EVERY_S = 60.0  # at most one warning per kind of refusal this often


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost before the parser has a whole request head."""

    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    max_connections: int = 1000
    write_timeout_s: float = 30.0


#: Connections kept beyond ``max_connections`` for health probes (one request each).
PROBE_SLOTS = 16
#: Requests such a connection may make; their heads must arrive within PROBE_HEAD_TIMEOUT_S.
PROBE_PATHS = frozenset({b"/healthz", b"/readyz"})
PROBE_HEAD_TIMEOUT_S = 2.0


class _RateLimitedLog:
    """Counts refusals of one kind and logs a warning at most once per ``LOG_EVERY_S``."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.count = 0
        self.logged_at = -LOG_EVERY_S

    def __call__(self, **fields: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= LOG_EVERY_S:
            log.warning(self.message.format(count=self.count, **fields))
            self.logged_at = now
            self.count = 0


def error_bytes(status: int, reason: str, code: str, detail: str, extra: dict[str, str] | None = None) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with the service's JSON error body."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a request this protocol has refused."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`.

    Use :func:`guarded_protocol` to get a subclass bound to a set of limits; uvicorn
    creates one instance per connection."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    _refused_log: ClassVar[_RateLimitedLog]
    _timeout_log: ClassVar[_RateLimitedLog]
    _too_large_log: ClassVar[_RateLimitedLog]
    _write_log: ClassVar[_RateLimitedLog]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # a request head may be arriving (no complete head since the last response)
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered and closing: nothing more is parsed or said
        self._message_done = True  # the parser has seen the end of the current request
        self._probe_only = False  # beyond the cap: one health probe, nothing else
        self._write_timer: asyncio.TimerHandle | None = None
        self._running_cycle: Any = None
        self._heads_begun = 0  # request heads the parser has started (counts pipelined ones)

    # ------------------------------------------------------------------ connection cap
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        open_now = len(self.connections)
        if open_now > cap + PROBE_SLOTS:
            self._refuse_connection()
            return
        self._probe_only = open_now > cap
        self._arm_head_timer()

    def _refuse_connection(self) -> None:
        cap = self.limits.max_connections
        self._refused_log(limit=cap)
        self._in_head = False
        self._refused = True
        self.transport.write(
            error_bytes(
                503,
                "Service Unavailable",
                "too_many_connections",
                f"the server holds its limit of {cap} open connections; retry shortly",
                {"retry-after": "1"},
            )
        )
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_write_timer()
        # uvicorn marks only its newest cycle as disconnected; with pipelined requests the
        # running one is older, and its next write raised on the closed transport (two
        # tracebacks per connection). Every unfinished cycle of this connection is told.
        pending = [self._running_cycle, *(c for c, _ in self.pipeline)]
        for cycle in pending:
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ write timeout
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        """The client has read nothing for write_timeout_s: reset the connection, so neither
        the transport's buffer nor the kernel's (a plain close would wait behind the unsent
        bytes, in FIN-WAIT-1) holds the response any longer."""
        self._write_timer = None
        self._write_log(seconds=self.limits.write_timeout_s)
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        self.transport.abort()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running_cycle = cycle  # uvicorn keeps only the newest parsed cycle in self.cycle
        super()._start_asgi_task(cycle, app)

    # ------------------------------------------------------------------ head time limit
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        t = self.limits.header_timeout_s
        self._head_timer = self.loop.call_later(
            min(t, PROBE_HEAD_TIMEOUT_S) if self._probe_only else t, self._head_timed_out
        )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._in_head:
            if not self._message_done:  # the rest of an answered request's body never came
                self.transport.close()
            return
        if self._probe_only:  # a connection beyond the cap that sent no probe: it is told why
            self._refuse_connection()
            return
        t = self.limits.header_timeout_s
        self._timeout_log(seconds=t)
        if self._head_bytes or self.headers:  # part of a request arrived: say why it ends
            self.transport.write(
                error_bytes(
                    408,
                    "Request Timeout",
                    "header_timeout",
                    f"the request line and headers did not arrive within {t:g} s",
                )
            )
        self.transport.close()

    # ------------------------------------------------------------------ head size limit
    def data_received(self, data: bytes) -> None:
        reading_head = self._in_head
        begun = self._heads_begun
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        if self._heads_begun != begun:
            # A head began within this read (after pipelined requests, say): only what the
            # parser has of it so far counts, not the requests before it in the same read.
            self._head_bytes = self._parsed_head_size()
        elif reading_head:
            self._head_bytes += len(data)
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse_head()

    def _parsed_head_size(self) -> int:
        return len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)

    def _refuse_head(self) -> None:
        limit = self.limits.max_header_bytes
        self._too_large_log(limit=limit)
        self._in_head = False
        self._refused = True
        self.transport.write(
            error_bytes(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"the request line and headers exceed {limit} bytes",
            )
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers a request its parser refuses, as the service's JSON error."""
        if self._refused:  # the parser stopped because this protocol refused the head
            return
        self._in_head = False
        self.transport.write(
            error_bytes(400, "Bad Request", "bad_request", f"{msg.rstrip('.')}: the request is not valid HTTP/1.1")
        )
        self.transport.close()

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._heads_begun += 1
        self._in_head = True
        self._head_bytes = 0
        self._message_done = False

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._message_done = True
        super().on_message_complete()
        # An answer sent before its body had arrived (413, 503): the body has now been read
        # past, and the connection waits for its next request head.
        if self.cycle is not None and self.cycle.response_complete and not self.transport.is_closing():
            self._await_next_head()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._cancel_head_timer()
        # A head that arrived in one read was not counted by data_received: count it here.
        size = self._parsed_head_size()
        if size > self.limits.max_header_bytes:
            self._refuse_head()
            raise HeadRefused  # stops the parser; the app never sees this request
        if self._probe_only:
            method = self.parser.get_method()
            if method not in (b"GET", b"HEAD") or self.url.split(b"?", 1)[0] not in PROBE_PATHS:
                self._refuse_connection()
                return  # no request cycle: the callbacks below ignore the rest of this connection
        super().on_headers_complete()
        if self._probe_only and self.cycle is not None:
            self.cycle.keep_alive = False  # one probe, then the connection closes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if not self._message_done:  # answered early; the rest of its body is read past, within the limit
            self._arm_head_timer()
            return
        if self.cycle is None or self.cycle.response_complete:  # no pipelined request started
            self._await_next_head()

    def _await_next_head(self) -> None:
        """Idle again: the next request head is counted and timed from now."""
        self._in_head = True
        self._head_bytes = 0
        self._arm_head_timer()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A :class:`GuardedHttpToolsProtocol` subclass bound to ``limits`` (for ``uvicorn.Config(http=...)``)."""
    attrs = {
        "limits": limits,
        "_refused_log": _RateLimitedLog(
            "refused {count} connection(s) beyond the limit of {limit} open connections (max_connections)"
        ),
        "_timeout_log": _RateLimitedLog(
            "closed {count} connection(s) whose request head did not arrive within {seconds:g} s (header_timeout_s)"
        ),
        "_too_large_log": _RateLimitedLog(
            "refused {count} request(s) whose request line and headers exceed {limit} bytes (max_header_bytes)"
        ),
        "_write_log": _RateLimitedLog(
            "closed {count} connection(s) that read none of their response for {seconds:g} s (write_timeout_s)"
        ),
    }
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attrs)
