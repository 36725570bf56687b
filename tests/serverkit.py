"""A real ``captioner serve`` subprocess for the tests: the handle and the wait for it.

Both the service tests (tests/service/servicekit.py) and the reliability tests
(tests/reliability/relkit.py) start their servers their own way (checkpoint, limits, API
key) and then share this: :class:`Server` and :func:`wait_ready`.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def serve_command(checkpoint: Path, *args: str) -> list[str]:
    """``captioner serve`` of ``checkpoint`` on a loopback port it picks itself, one torch
    thread, warnings only; ``args`` add or override flags."""
    return [
        sys.executable,
        "-m",
        "captioner",
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--threads",
        "1",
        "--log-level",
        "warning",
        *args,
    ]


@dataclass
class Server:
    """A running ``captioner serve`` subprocess; ``headers`` go with every :meth:`client`."""

    proc: subprocess.Popen
    url: str
    log: Path
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, auth: bool = True, **kw) -> httpx.Client:
        headers = {**(self.headers if auth else {}), **kw.pop("headers", {})}
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60.0), headers=headers, **kw)

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def rss_kb(self) -> int:
        """Resident memory of the server process (VmRSS), in KiB."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        assert m is not None, text
        return int(m.group(1))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (the graceful drain), then a kill after 30 s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def wait_ready(proc: subprocess.Popen, log: Path, timeout_s: float, headers: dict[str, str] | None = None) -> Server:
    """Wait for the 'listening on URL' line in the log, then for /readyz to answer 200."""
    deadline = time.monotonic() + timeout_s
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"captioner serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        if url is None:
            m = re.search(r"listening on (http://[\d.]+:\d+)", log.read_text(errors="replace"))
            url = m.group(1) if m else None
        if url is not None:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    return Server(proc, url, log, dict(headers or {}))
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"captioner serve was not ready after {timeout_s} s:\n{log.read_text(errors='replace')}")
