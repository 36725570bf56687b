"""Helpers of the reliability tests: a small checkpoint and a real server in a subprocess.

* :func:`build_checkpoint` - the real pretrained EfficientNet-Lite0 encoder with a small random
  LSTM decoder and a ten-word vocabulary (``captionkit.teach_checkpoint`` untaught), its graphs
  exported (no training: the tests check that nothing breaks, not what the captions say).
* :func:`launch_server` / :func:`wait_ready` - ``captioner serve`` in a subprocess on a loopback port it picks itself,
  with an API key and small limits (queue of 16 images, 4 files and 4 MiB per request,
  16 megapixels per image), so the limits are reached quickly. ``Server.rss_kb()``
  reads the server's resident memory from /proc; :func:`server_with` - one with other settings.
* :func:`connect`, :func:`read_head`, :func:`read_reply`, :func:`json_reply` - raw HTTP on a
  socket, for the attacks below the API (bounded by ``WAIT_S``).

The fixtures that use them are in conftest.py; bench/overload.py uses them too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent):  # hostile.py here, serverkit.py in tests/ (bench/ imports this file too)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import serverkit  # noqa: E402
from hostile import MAX_PIXELS  # noqa: E402
from serverkit import Server  # noqa: E402

API_KEY = "reliability-key-6f1c0a9d"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_FILES = 4
QUEUE_SIZE = 16
STARTUP_TIMEOUT_S = 180.0
WAIT_S = 30.0  # the socket helpers' bound on any wait: far above what the server needs
ROOT = HERE.parent.parent


def build_checkpoint(out: Path) -> Path:
    """Pretrained encoder + small random decoder, saved with its graphs (what the servers
    run: their environment has no CAPTIONER_CACHE_DIR)."""
    from captionkit import teach_checkpoint

    metadata = {"model_id": "reliability-random", "training_data": "none (random weights)"}
    vocabulary = ["a red square on a blue background", "two green circles near a cat"]
    return teach_checkpoint(out, [], vocabulary, max_length=8, metadata=metadata, width=16, export=True)


def launch_server(
    checkpoint: Path, log: Path, *args: str, api_key: str | None = API_KEY, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``captioner serve --port 0`` with this module's limits; output to ``log``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    full_env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    if api_key:
        full_env["CAPTIONER_API_KEY"] = api_key
    cmd = serverkit.serve_command(
        checkpoint,
        "--max-batch-size",
        "8",
        "--max-wait-ms",
        "5",
        "--queue-size",
        str(QUEUE_SIZE),
        "--max-files",
        str(MAX_FILES),
        "--max-body-bytes",
        str(MAX_BODY_BYTES),
        "--max-pixels",
        str(MAX_PIXELS),
        "--request-timeout",
        "30",
        "--workers",
        "2",
        *args,
    )
    return subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env, start_new_session=True, cwd=log.parent
    )


def wait_ready(proc: subprocess.Popen, log: Path) -> Server:
    """Wait for the server to be ready; its clients send the API key."""
    return serverkit.wait_ready(proc, log, STARTUP_TIMEOUT_S, headers=AUTH)


@contextlib.contextmanager
def server_with(checkpoint: Path, workdir: Path, **settings: float) -> Iterator[Server]:
    """A server as :func:`launch_server` starts it, with service ``settings`` on top (as
    ``CAPTIONER_<NAME>``: ``max_connections=40``, ...), stopped at the end."""
    log = workdir / "server.log"
    env = {f"CAPTIONER_{name.upper()}": str(value) for name, value in settings.items()}
    server = wait_ready(launch_server(checkpoint, log, env=env), log)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------- raw HTTP on sockets
def connect(server: Server, source: str | None = None) -> socket.socket:
    """A TCP connection to ``server`` (from the loopback address ``source``, if given)."""
    address = (source, 0) if source else None
    s = socket.create_connection(server.host_port, timeout=WAIT_S, source_address=address)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_head(s: socket.socket) -> bytes:
    """The next response's status line and headers (and whatever came with them)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_reply(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or WAIT_S passes)."""
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    return data


def json_reply(reply: bytes) -> tuple[int, dict[str, str], dict]:
    """(status, lower-cased headers, JSON body) of one complete JSON response."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert headers.get("content-type", "").startswith("application/json"), reply[:300]
    length = int(headers.get("content-length", len(body)))
    return int(lines[0].split()[1]), headers, json.loads(body[:length])


# ---------------------------------------------------------------------------- malicious pickles
class Payload:
    """Unpickling this runs ``touch <marker>``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def plant(path: Path, marker: Path, how: str = "pickle") -> None:
    """Replace ``path`` by a malicious pickle (plain, or in torch.save's zip format)."""
    import torch

    if how == "torch":
        buf = io.BytesIO()
        torch.save({"state_dict": {"w": Payload(marker)}}, buf)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps({"w": Payload(marker)}))
