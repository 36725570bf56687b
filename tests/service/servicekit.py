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
import torch
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


def adam(module: torch.nn.Module, loss_fn, steps: int, lr: float, betas=(0.9, 0.999), eps=1e-8) -> float:
    """A few lines of Adam, because importing torch.optim pulls in torch._dynamo (seconds)."""
    params = [p for p in module.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2 = betas
    loss = torch.tensor(float("nan"))
    for step in range(1, steps + 1):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, m_, v_ in zip(params, grads, m, v):
                m_.mul_(b1).add_(g, alpha=1 - b1)
                v_.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.sub_(lr * (m_ / (1 - b1**step)) / ((v_ / (1 - b2**step)).sqrt() + eps))
    return float(loss.detach())


def build_checkpoint(out: Path) -> Path:
    """Train the colour-naming decoder on top of the pretrained encoder and save it."""
    from captioner import CaptionDecoder, DecoderConfig, Vocabulary
    from captioner.encoders import build_encoder
    from captioner.model import ReferenceCaptioner
    from captioner.model.export import export_graphs

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = build_encoder("efficientnet_lite0").eval()
        pre = encoder.spec.preprocess
        names = list(COLOURS)
        images, captions = [], []
        for i, name in enumerate(names):
            for j in range(3):
                data = colour_image(
                    name, seed=100 * i + j, size=(40 + 16 * j, 40 + 8 * j), fmt="PNG" if j % 2 else "JPEG"
                )
                images.append(pre(Image.open(io.BytesIO(data)).convert("RGB")))
                captions.append(f"a {name} picture")
        with torch.no_grad():
            feats = encoder(torch.from_numpy(np.stack(images))).float()  # (N, 1280)
        vocab = Vocabulary.build(captions)
        seqs = [vocab.encode(c) for c in captions]
        T = max(len(s) for s in seqs)
        tokens = torch.tensor([s + [vocab.pad_id] * (T - len(s)) for s in seqs])  # (N, T)
        cfg = DecoderConfig(
            vocab_size=len(vocab),
            feature_dim=encoder.feature_dim,
            embed_dim=32,
            hidden_dim=64,
            img_proj_dim=32,
            dropout=0.0,
            max_length=8,
        )
        decoder = CaptionDecoder(cfg)
        adam(decoder, lambda: decoder.loss(feats, tokens, vocab.pad_id), steps=150, lr=1e-2)
        decoder.eval()
        model = ReferenceCaptioner(
            encoder,
            decoder,
            vocab,
            device="cpu",
            metadata=TRAINING_METADATA,
        )
        got = [r.caption for r in model.generate(feats.numpy())]
        assert got == captions, f"the test decoder did not learn the colours: {got}"
        export_graphs(model.save(out))  # the servers load it torch-free, as a user's would
    finally:
        torch.set_num_threads(threads)
    return out


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
