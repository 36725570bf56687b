"""Decoding cost of the attention decoder against the pooled one, per image.

    python -m bench.attention_step                   # the shipped sizes, ~2 min the first time
    python -m bench.attention_step --seconds 3 --batch 1 8 32

Both decoders have the shipped model's sizes (LSTM, embedding 128, W_ih 128, hidden 256,
vocabulary 111; the attention MLP 128 wide over 7 x 7 x 1280 maps) with random weights,
saved as checkpoints with their exported graphs under bench/.cache (built once). The
features are random. A random decoder rarely emits ``<end>``, so captions run to
``--max-length`` words (default 12, about a scenes caption): the figures are greedy (or,
with ``--beam K``, beam search) milliseconds per image at that length. Each decoder is
timed through the one numpy search (:mod:`captioner.runtime.search`) over its two step
objects: the exported graphs on ONNX Runtime (``OnnxStep``: what ``Captioner`` runs) and
the PyTorch modules (``TorchStep``: the reference path).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import SCRATCH
from captioner.attention import AttentionConfig, build_decoder
from captioner.checkpoint import GRAPHS
from captioner.decoder import DecoderConfig
from captioner.runtime import search
from captioner.runtime.graphs import MANIFEST
from captioner.vocab import Vocabulary

SIZES = dict(vocab_size=111, feature_dim=1280, embed_dim=128, img_proj_dim=128, hidden_dim=256, max_length=30)


def checkpoint(kind: str) -> Path:
    """A checkpoint of the real Lite0 encoder and a random decoder of ``kind`` with the
    shipped sizes, graphs exported (built once under bench/.cache)."""
    from captioner.encoders import build_encoder
    from captioner.model import ReferenceCaptioner
    from captioner.model.export import export_graphs

    out = SCRATCH / f"attention-step-{kind}"
    if (out / GRAPHS / MANIFEST).exists():
        return out
    torch.manual_seed(0)
    vocab = Vocabulary.build([" ".join(f"word{i}" for i in range(int(SIZES["vocab_size"]) - 4))])
    sizes = dict(SIZES, vocab_size=len(vocab))
    config = AttentionConfig(**sizes, attention_dim=128) if kind == "attention" else DecoderConfig(**sizes)  # type: ignore[arg-type]
    encoder = build_encoder("efficientnet_lite0", spatial=kind == "attention")
    ReferenceCaptioner(encoder, build_decoder(config), vocab, device="cpu").save(out)
    export_graphs(out)
    return out


def per_image_ms(step: search.DecoderStep, features: np.ndarray, max_length: int, beam: int, seconds: float) -> float:
    """Median milliseconds per image of one search over ``features`` (B, F) or (B, N, C)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        t0 = time.perf_counter()
        if beam > 1:
            search.beam_search(step, features, 1, 2, max_length, beam, 0.0, 0)
        else:
            search.sequential(step, features, 1, 2, max_length, no_repeat_ngram_size=0)
        times.append((time.perf_counter() - t0) * 1000 / len(features))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=12)
    p.add_argument("--beam", type=int, default=1, help="beam width (default 1: greedy)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from captioner import Captioner, ReferenceCaptioner

    rows: list[tuple[str, Any, bool]] = []  # (name, step, spatial); the steps are DecoderSteps
    for kind in ("pooled", "attention"):
        folder = checkpoint(kind)
        onnx = Captioner.load(folder).decoder_step()  # OnnxStep on the exported graphs
        torch_step = ReferenceCaptioner.load(folder, device="cpu").decoder_step()  # TorchStep
        rows += [(f"{kind}, ONNX Runtime step", onnx, kind == "attention")]
        rows += [(f"{kind}, PyTorch step", torch_step, kind == "attention")]
    rng = np.random.default_rng(0)
    what = "greedy" if args.beam <= 1 else f"beam {args.beam}"
    print(f"{what}, {args.max_length} words, ms per image")
    print("| decoder step | " + " | ".join(f"batch {b}" for b in args.batch) + " |")
    print("| --- | " + " | ".join("---:" for _ in args.batch) + " |")
    for name, step, spatial in rows:
        cells = []
        for b in args.batch:
            shape = (b, 49, 1280) if spatial else (b, 1280)
            feats = np.abs(rng.standard_normal(shape, dtype=np.float32))  # CNN outputs are >= 0
            cells.append(f"{per_image_ms(step, feats, args.max_length, args.beam, args.seconds):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
