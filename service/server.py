"""Running the app under uvicorn with a graceful, load-balancer-friendly shutdown.

On the first SIGTERM or SIGINT the service starts *draining*: ``/readyz`` answers 503
at once, so a load balancer or orchestrator stops sending new requests, while the server
keeps serving for ``drain_seconds``. Then uvicorn closes the listening socket, waits for
in-flight requests to finish (up to the request timeout plus a margin) and the app runs
what is still queued before the process exits with status 0. A second signal skips the
wait; a third (Ctrl+C) forces the exit.

Connections are guarded before any request reaches the app (:mod:`service.connections`):
a limit on the size of a request head and on the time it may take to arrive, and a cap on
open connections, all from the settings (``max_header_bytes``, ``header_timeout_s``,
``max_connections``).
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from captioner.errors import CaptionerError

from .connections import ConnectionLimits, guarded_protocol
from .settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal marks the app as draining and delays the
    actual shutdown by ``drain_seconds``."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float) -> None:
        super().__init__(config)
        self.fastapi_app = app
        self.drain_seconds = drain_seconds
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is None:  # first signal: drain
            service = getattr(self.fastapi_app.state, "service", None)
            if service is not None:
                service.draining = True
            self._exit_at = time.monotonic() + self.drain_seconds
            log.warning(
                "received %s: draining (readyz reports 503) for %.1f s, then finishing in-flight requests",
                signal.Signals(sig).name,
                self.drain_seconds,
            )
            if self.drain_seconds <= 0:
                self.should_exit = True
            return
        # Not uvicorn's handle_exit: it records the signal and raises it again after the
        # shutdown, so a second SIGTERM would end the process with -15 instead of 0.
        if not self.should_exit:  # second signal: skip the rest of the drain period
            log.warning("received %s again: ending the drain period now", signal.Signals(sig).name)
            self.should_exit = True
        else:  # third: stop waiting for in-flight requests
            log.warning("received %s a third time: exiting without waiting for requests", signal.Signals(sig).name)
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free port); a clear error when taken.

    The socket is made with ``IPPROTO_TCP`` spelled out: asyncio turns Nagle's algorithm off
    (``TCP_NODELAY``) only on sockets whose protocol says TCP, and the accepted connections
    inherit it. With protocol 0, a response written as head and body waited for the client's
    delayed ACK: 40 ms added to every request."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CaptionerError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or stop the program using it"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


#: File descriptors kept beside the connections: model files, decode workers' pipes, logs.
SPARE_FDS = 128


def ensure_fd_room(max_connections: int) -> None:
    """Raise the soft limit on open files so ``max_connections`` fit beside ``SPARE_FDS``;
    warn when the hard limit does not allow it (the connection cap would not be reached)."""
    import resource

    need = max_connections + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning(
            "the open-file limit is %d: max_connections=%d cannot be reached; lower max_connections "
            "to %d or raise the limit (ulimit -n)",
            target,
            max_connections,
            max(1, target - SPARE_FDS),
        )


def serve(app: FastAPI, settings: Settings, sock: socket.socket) -> None:
    """Serve ``app`` on an already bound socket until a signal ends it (see module docstring)."""
    ensure_fd_room(settings.max_connections)
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
        write_timeout_s=settings.write_timeout_s,
    )
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits),
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
    )
    DrainingServer(config, app, settings.drain_seconds).run(sockets=[sock])
