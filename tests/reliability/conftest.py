"""Fixtures of the reliability tests (helpers in relkit.py, the corpus in hostile.py).

* ``rel_checkpoint`` - pretrained EfficientNet-Lite0 + a small random decoder, saved once;
* ``rel_server`` - ``captioner serve`` on loopback with an API key and small limits;
* ``corpus`` - the hostile corpus, built once per session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile import hostile_images
from relkit import Server, build_checkpoint, launch_server, wait_ready


@pytest.fixture(scope="session")
def rel_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("rel-ckpt") / "random-small")


@pytest.fixture(scope="session")
def rel_server(rel_checkpoint, tmp_path_factory) -> Server:
    workdir = tmp_path_factory.mktemp("rel-server")
    log = workdir / "server.log"
    server = wait_ready(launch_server(rel_checkpoint, log), log)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def corpus():
    return hostile_images()
