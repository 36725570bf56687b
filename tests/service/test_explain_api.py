"""``POST /v1/captions?explain=true``: per image, per word and for the end token, the
attention grid (7 x 7 weights that sum to 1) and its peak cell, on a real uvicorn serving an
attention checkpoint; on the pooled test server the request is refused with 422 before the
body is read, and without explain nothing changes. Documented in OpenAPI."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from servicekit import colour_image, launch, wait_ready


def build_attention_checkpoint(out: Path) -> Path:
    """The real spatial EfficientNet-Lite0 and a small random attention decoder."""
    from captioner import Captioner, Vocabulary
    from captioner.attention import AttentionConfig, AttentionDecoder
    from captioner.encoders import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_lite0", spatial=True).eval()
    vocab = Vocabulary(["a", "red", "blue", "picture"])
    cfg = AttentionConfig(
        vocab_size=len(vocab),
        feature_dim=encoder.feature_dim,
        embed_dim=16,
        hidden_dim=32,
        img_proj_dim=16,
        attention_dim=16,
        dropout=0.0,
        max_length=5,
    )
    model = Captioner(encoder, AttentionDecoder(cfg), vocab, device="cpu", fast=False)
    return model.save(out)


@pytest.fixture(scope="module")
def attention_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    proc = launch(build_attention_checkpoint(root / "ckpt"), root / "server.log", "--max-wait-ms", "5")
    server = wait_ready(proc, root / "server.log")
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        server.stop()


def test_explain_adds_each_words_attention_grid_and_peak(attention_server):
    files = [
        ("file", ("a.png", colour_image("red", 1), "image/png")),
        ("file", ("b.jpg", b"not an image", "image/jpeg")),
    ]
    with attention_server.client() as c:
        r = c.post("/v1/captions", params={"explain": "true", "max_length": 4}, files=files)
        plain = c.post("/v1/captions", files=files[:1])
    assert r.status_code == 200, r.text
    good, bad = r.json()["results"]
    words = good["caption"].split() if good["caption"] else []
    said = [w["word"] for w in good["attention"] if w["word"] not in ("<start>", "<pad>")]  # a random decoder's
    assert said == [*words, "<end>"]
    for w in good["attention"]:
        grid = np.array(w["attention"])
        assert grid.shape == (7, 7)
        assert abs(grid.sum() - 1.0) < 0.01 and (grid >= 0).all()
        assert grid[w["peak"][0], w["peak"][1]] == grid.max()
    assert "attention" not in bad and bad["error"]  # a failed image has no maps
    assert plain.status_code == 200 and "attention" not in plain.json()["results"][0]


def test_explain_on_a_pooled_model_is_refused_before_the_body(server):
    with server.client() as c:
        r = c.post("/v1/captions", params={"explain": "true"}, files=[("file", ("a.png", b"x", "image/png"))])
        bad = c.post("/v1/captions", params={"explain": "maybe"}, files=[("file", ("a.png", b"x", "image/png"))])
        spec = c.get("/openapi.json").json()
    assert r.status_code == 422 and r.json()["error"] == "explain_unavailable"
    assert "attention model" in r.json()["detail"]
    assert bad.status_code == 422
    params = {p["name"] for p in spec["paths"]["/v1/captions"]["post"]["parameters"]}
    assert "explain" in params
    assert "WordAttention" in spec["components"]["schemas"]
