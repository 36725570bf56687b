"""Helpers of the service tests: checkable test images, a small trained checkpoint, and
running ``captioner serve`` in a subprocess (fixtures using them live in conftest.py).

The checkpoint: the real pretrained EfficientNet-Lite0 encoder and a small LSTM decoder
trained for a few seconds to name the colour of a plain, noisy picture ("a red picture",
"a blue picture", ...). Its captions are therefore *checkable*: a test knows which caption
each image must get, so a result delivered to the wrong request cannot go unnoticed.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import numpy as np
import serverkit
from captionkit import teach_checkpoint
from PIL import Image
from serverkit import Server

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (35, 60, 215),
    "yellow": (235, 215, 40),
}
API_KEY = "test-key-0123456789"
#: What a real training run records, including the training machine's absolute paths
#: (which /v1/model must not show).
TRAINING_METADATA = {
    "model_id": "test-colours",
    "training_data": "plain noisy colour pictures",
    "dataset": {"path": "/home/ann/datasets/colours", "format": "scenes"},
    "train_config": {"data": "data/colours", "out": "runs/colours", "cache_dir": "/tmp/ann-cache/features"},
    "run": {"command": "captioner train --data /home/ann/datasets/colours --out runs/colours --cache-dir C:\\cache\\x"},
}
SECRET_PATH_PARTS = ("/home/ann", "/tmp/ann-cache", "C:\\cache")
STARTUP_TIMEOUT_S = 120.0


def colour_image(colour: str, seed: int, size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    """A plain picture of ``colour`` with mild noise, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], dtype=np.float32)
    pixels = base + rng.normal(0, 12, size=(size[1], size[0], 3))
    im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def build_checkpoint(out: Path) -> Path:
    """Teach the colour-naming decoder on top of the pretrained encoder; save and export it
    (the servers load it torch-free, as a user's would)."""
    images, captions = [], []
    for i, name in enumerate(COLOURS):
        for j in range(3):
            fmt = "PNG" if j % 2 else "JPEG"
            images.append(colour_image(name, seed=100 * i + j, size=(40 + 16 * j, 40 + 8 * j), fmt=fmt))
            captions.append(f"a {name} picture")
    return teach_checkpoint(out, images, captions, max_length=8, metadata=TRAINING_METADATA, export=True)


def launch(checkpoint: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``captioner serve --port 0`` with its output in ``log`` (a pipe could fill up)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    # The service's own settings come only from the flags and ``env`` given here.
    from captioner.service.settings import Settings

    settings_vars = {f"CAPTIONER_{name.upper()}" for name in Settings.model_fields}
    full_env = {k: v for k, v in full_env.items() if k not in settings_vars or k in (env or {})}
    cmd = serverkit.serve_command(checkpoint, *args)
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env, start_new_session=True)


def wait_ready(proc: subprocess.Popen, log: Path) -> Server:
    """Wait for the server to be ready (the URL line in its log, then /readyz 200)."""
    return serverkit.wait_ready(proc, log, STARTUP_TIMEOUT_S)
