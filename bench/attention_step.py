"""Decoding cost of the attention decoder against the pooled one, per image.

    python -m bench.attention_step                   # the shipped sizes, ~1 min
    python -m bench.attention_step --seconds 3 --batch 1 8 32

Both decoders have the shipped model's sizes (LSTM, embedding 128, W_ih 128, hidden 256,
vocabulary 111; the attention MLP 128 wide over 7 x 7 x 1280 maps) with random weights
and random features. A random decoder rarely emits ``<end>``, so captions run to
``--max-length`` words (default 12, about a scenes caption): the figures are greedy
milliseconds per image at that length. Rows: the pooled decoder's step on PyTorch and on
ONNX Runtime (the default path), and the attention decoder's step on PyTorch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import cast

import torch

from captioner.attention import AttentionConfig, AttentionDecoder
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.runtime.onnx_decoder import build_onnx_decoder

SIZES = dict(vocab_size=111, feature_dim=1280, embed_dim=128, img_proj_dim=128, hidden_dim=256, max_length=30)


def per_image_ms(decoder: CaptionDecoder, features: torch.Tensor, max_length: int, seconds: float) -> float:
    """Median greedy milliseconds per image over repeated calls for ``seconds``."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        t0 = time.perf_counter()
        decoder.greedy(features, 1, 2, max_length, no_repeat_ngram_size=0)
        times.append((time.perf_counter() - t0) * 1000 / features.size(0))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=12)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pooled = CaptionDecoder(DecoderConfig(**SIZES)).eval()  # type: ignore[arg-type]
    attention = AttentionDecoder(AttentionConfig(**SIZES, attention_dim=128)).eval()  # type: ignore[arg-type]
    onnx, reason = build_onnx_decoder(pooled)
    rows = [("pooled, PyTorch step", pooled, False), ("attention, PyTorch step", attention, True)]
    fast_attention, why = build_onnx_decoder(attention)
    if fast_attention is not None:
        rows.append(("attention, ONNX Runtime step", cast(CaptionDecoder, fast_attention), True))
    else:
        print(f"no ONNX Runtime attention row: {why}")
    if onnx is not None:
        rows.insert(1, ("pooled, ONNX Runtime step", cast(CaptionDecoder, onnx), False))
    else:
        print(f"no ONNX Runtime row: {reason}")
    print("| decoder | " + " | ".join(f"batch {b} ms/image" for b in args.batch) + " |")
    print("| --- | " + " | ".join("---:" for _ in args.batch) + " |")
    for name, decoder, spatial in rows:
        cells = []
        for b in args.batch:
            shape = (b, 49, 1280) if spatial else (b, 1280)
            cells.append(f"{per_image_ms(decoder, torch.randn(*shape), args.max_length, args.seconds):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
