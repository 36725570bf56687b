"""A checkpoint taught to give known captions to known pictures (for checkable tests).

A random decoder gives nearly every image the same caption, so a test that compares a
run's captions with "what the model says" cannot notice a caption written against the
wrong file, and a score computed from such captions is 0 whatever the scorer does.
:func:`teach_checkpoint` trains a small decoder on the real EfficientNet-Lite0 encoder
until it gives each of a few pictures its own caption, and refuses to return otherwise:
the tests using it know which caption each file must get. The same function gives the
service, reliability and graph tests their checkpoints (untaught, attention, exported).

(``tests/conftest.py`` puts this folder on ``sys.path``: ``from captionkit import ...``.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from captioner.encoders import Preprocess

TINY_PRE = Preprocess(resize_size=32, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # TinyEncoder's


def adam_steps(module: torch.nn.Module, loss_fn, steps: int, lr: float) -> float:
    """Plain Adam in a few lines (importing torch.optim pulls in torch._dynamo: seconds)."""
    params = [p for p in module.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
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


def teach_checkpoint(
    out: Path,
    images: Sequence[Path | bytes],
    captions: Sequence[str],
    max_length: int = 16,
    metadata: dict | None = None,
    expect: Sequence[str] | None = None,
    *,
    attention: bool = False,
    width: int = 32,
    steps: int = 150,
    seed: int = 0,
    export: bool = False,
) -> Path:
    """Save a checkpoint whose greedy and beam captions of ``images[i]`` are ``captions[i]``.

    An image may be listed more than once with different captions (the decoder then learns
    how often each follows); ``expect`` is what greedy and beam search must then give for each
    row (default: ``captions``). With no images the decoder stays random (its vocabulary is
    the captions' words): for tests of plumbing, not of captions.

    ``attention``: the spatial encoder and an attention decoder instead of the pooled LSTM;
    ``width``: the embedding, projection (and attention) size, the hidden state twice that;
    ``steps``: Adam steps per round (at most four rounds). Weights only unless ``export``
    (the graphs, as a server loads them torch-free); else :meth:`captioner.Captioner.load`
    exports them into the cache on first load.
    """
    from captioner.model import ReferenceCaptioner
    from captioner.model.export import export_graphs
    from captioner.vocab import Vocabulary

    assert not images or len(images) == len(captions)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vocab = Vocabulary.build(list(captions))
        encoder, decoder = _lite0_and_decoder(len(vocab), width, max_length, attention)
        model = ReferenceCaptioner(encoder, decoder, vocab, device="cpu", metadata=metadata)
        if images:
            _teach(model, images, captions, list(captions if expect is None else expect), steps)
        model.save(out)
    finally:
        torch.set_num_threads(threads)
    if export:
        export_graphs(out)
    return out


def _lite0_and_decoder(vocab_size: int, width: int, max_length: int, attention: bool):
    """The pretrained Lite0 (pooled, or its 7 x 7 map) and a small fresh decoder for it."""
    from captioner.attention import AttentionConfig, AttentionDecoder
    from captioner.decoder import CaptionDecoder, DecoderConfig
    from captioner.encoders import build_encoder

    encoder = build_encoder("efficientnet_lite0", spatial=attention).eval()
    cfg = DecoderConfig(
        vocab_size=vocab_size,
        feature_dim=encoder.feature_dim,
        embed_dim=width,
        hidden_dim=2 * width,
        img_proj_dim=width,
        dropout=0.0,
        max_length=max_length,
    )
    if attention:
        return encoder, AttentionDecoder(AttentionConfig(**dataclasses.asdict(cfg), attention_dim=width))
    return encoder, CaptionDecoder(cfg)


def _teach(model, images: Sequence[Path | bytes], captions: Sequence[str], wanted: list[str], steps: int) -> None:
    """Train ``model``'s decoder until greedy and beam search give ``wanted``; refuse otherwise."""
    from captioner.options import CaptionOptions

    decoder, vocab = model.decoder, model.vocab
    x = np.stack([model.preprocess(im if isinstance(im, bytes) else Path(im).read_bytes()) for im in images])
    feats_np = model.encode(x)  # (N, 1280) or (N, 49, 1280), as every caption path computes them
    feats = torch.from_numpy(feats_np)
    seqs = [vocab.encode(c) for c in captions]
    T = max(len(s) for s in seqs)
    tokens = torch.tensor([s + [vocab.pad_id] * (T - len(s)) for s in seqs])  # (N, T)
    got: list[str] = []
    beam: list[str] = []
    for _round in range(4):
        decoder.train()
        adam_steps(decoder, lambda: decoder.loss(feats, tokens, vocab.pad_id), steps=steps, lr=1e-2)
        decoder.eval()
        got = [r.caption for r in model.generate(feats_np)]
        beam = [r.caption for r in model.generate(feats_np, CaptionOptions(beam_size=2))]
        if got == wanted and beam == got:
            return
    raise AssertionError(f"the test decoder did not learn its captions: {got}, {beam}")


def tiny_scenes(root: Path, seed: int) -> Path:
    """A 24-image scenes dataset of four kinds (16 train, 4 val, 4 test) in ``root / "data"``."""
    from captioner.training.scenes import generate_scenes
    from captioner.training.scenes.catalogue import CATEGORY_BY_NAME

    kinds = [CATEGORY_BY_NAME[k] for k in ("dog", "car", "apple", "cat")]
    generate_scenes(root / "data", {"train": 16, "val": 4, "test": 4}, seed=seed, categories=kinds, progress=False)
    return root / "data"


# ---------------------------------------------------------------------- a tiny CNN captioner
class TinyEncoder(torch.nn.Module):
    """(B, 3, 32, 32) -> (B, 16), with batch norm, ReLU6 and pooling like Lite0: enough
    structure to export and to quantise like the real one, in a fraction of a second."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, 2, 1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU6(),
            torch.nn.Conv2d(8, 16, 3, 2, 1),
            torch.nn.ReLU6(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 16)


def tiny_captioner(seed: int = 0, **kwargs):
    """A :class:`~captioner.model.ReferenceCaptioner` of :class:`TinyEncoder` and a small
    random decoder (32 px input) on the CPU; ``kwargs`` go to it (metadata=, trust=, ...)."""
    from captioner.decoder import CaptionDecoder, DecoderConfig
    from captioner.model import ReferenceCaptioner
    from captioner.vocab import Vocabulary

    torch.manual_seed(seed)
    vocab = Vocabulary.build(["a red square", "a blue circle"])
    decoder = CaptionDecoder(
        DecoderConfig(vocab_size=len(vocab), feature_dim=16, embed_dim=8, hidden_dim=16, img_proj_dim=8, max_length=5)
    )
    return ReferenceCaptioner(TinyEncoder().eval(), decoder, vocab, preprocess=TINY_PRE, device="cpu", **kwargs)
