"""Fixtures for the service tests: the test checkpoint and real uvicorn servers.

The servers run ``captioner serve`` in subprocesses on loopback ports picked by the
server itself (``--port 0``; the tests read the URL it prints), each waited for on
``/readyz``; they are all started at once so they load in parallel:

* ``server``  - defaults (no key, CORS off; two lanes) on two encoder threads, used by most
  tests;
* ``limited`` - API key, tiny queue and body limits, one image per batch, CORS on, its
  own generation limits (default beam 2, at most 3; max_length at most 6), and decoding
  in threads (``--decode-in threads``) rather than worker processes;
* ``drainer`` - the server the shutdown test sends SIGTERM to.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from servicekit import API_KEY, Server, build_checkpoint, launch, wait_ready


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "colours")


@pytest.fixture(scope="session")
def _servers(checkpoint, tmp_path_factory):
    """Start all servers at once (they load in parallel), stop them at the end."""
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "server": launch(
            checkpoint,
            logs / "server.log",
            "--max-batch-size",
            "16",
            "--max-wait-ms",
            "5",
            "--lanes",
            "2",
            "--threads",
            "2",
        ),
        "limited": launch(
            checkpoint,
            logs / "limited.log",
            "--max-batch-size",
            "1",
            "--queue-size",
            "2",
            "--max-files",
            "2",
            "--max-body-bytes",
            "65536",
            "--max-pixels",
            "250000",
            "--cors-origin",
            "http://allowed.example",
            "--body-timeout",
            "1.5",
            "--default-beam-size",
            "2",
            "--max-beam-size",
            "3",
            "--max-length-limit",
            "6",
            "--decode-in",
            "threads",
            env={"CAPTIONER_API_KEY": API_KEY},
        ),
        "drainer": launch(checkpoint, logs / "drainer.log", "--drain-seconds", "3", "--max-batch-size", "1"),
    }
    servers: dict[str, Server] = {}
    try:
        for name, proc in procs.items():
            servers[name] = wait_ready(proc, logs / f"{name}.log")
        yield servers
    finally:
        for proc in procs.values():  # signal all first: they shut down in parallel
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            Server(proc, "", logs / f"{name}.log").stop()


@pytest.fixture(scope="session")
def server(_servers) -> Server:
    return _servers["server"]


@pytest.fixture(scope="session")
def limited(_servers) -> Server:
    return _servers["limited"]


@pytest.fixture(scope="session")
def drainer(_servers) -> Server:
    return _servers["drainer"]
