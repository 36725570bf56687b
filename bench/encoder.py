"""Encoder backends on this CPU: which way of running EfficientNet-Lite0 is fastest.

    python -m bench.encoder                          # batch 1, 8, 32; ~2 min
    python -m bench.encoder --batch 1 8 16 32 64 --seconds 3 --no-torchscript

Candidates, all on the same weights and the same random (B, 3, 224, 224) input:

* ``eager``: the PyTorch module as written (the reference);
* ``eager channels_last``: the same with channels-last memory format;
* ``torchscript``: ``torch.jit.trace`` + ``torch.jit.freeze`` (batch-norm folded) +
  ``optimize_for_inference``, channels-last;
* ``onnxruntime``: ``captioner.model.onnx_encoder.OnnxEncoder`` (the exported graph, as the runtime runs it), intra-op threads =
  torch threads, no busy-waiting;
* ``onnxruntime 1 thread``: the same session pinned to one thread.

Each cell is the median images/s over ``--seconds`` of repeated forwards; the max abs
difference of the features from eager's is reported per backend. Build times (export,
tracing) are one-time costs, printed separately.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from . import common


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("encoder", __doc__, checkpoint=False)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes (default 1 8 32)")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per cell (default 2 s)")
    p.add_argument("--no-torchscript", action="store_true", help="skip the TorchScript candidate (slow to build)")
    args = p.parse_args(argv)
    common.apply_threads(args)
    from captioner.encoders import build_encoder
    from captioner.model.onnx_encoder import OnnxEncoder

    info = common.machine_info()
    common.header("encoder: backends", info)
    enc = build_encoder("efficientnet_lite0")
    x_max = torch.randn(max(args.batch), 3, 224, 224, generator=torch.Generator().manual_seed(0))
    build_s: dict[str, float] = {}
    backends: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

    backends["eager"] = enc
    enc_cl = build_encoder("efficientnet_lite0").to(memory_format=torch.channels_last)
    backends["eager channels_last"] = lambda x: enc_cl(x.contiguous(memory_format=torch.channels_last))
    if not args.no_torchscript:
        t = time.perf_counter()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            ex = x_max[:8].contiguous(memory_format=torch.channels_last)
            ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(enc_cl, ex, check_trace=False)))
            ts(ex)
        build_s["torchscript"] = time.perf_counter() - t
        backends["torchscript"] = lambda x: ts(x.contiguous(memory_format=torch.channels_last))
    t = time.perf_counter()
    ort = OnnxEncoder(enc, 224, cache_dir=False)
    build_s["onnxruntime (export + session)"] = time.perf_counter() - t
    backends[f"onnxruntime {ort.threads} threads"] = ort
    if ort.threads != 1:
        backends["onnxruntime 1 thread"] = OnnxEncoder(enc, 224, threads=1, cache_dir=False)

    with torch.inference_mode():
        reference = enc(x_max[:4])  # (4, F)
    rows: list[dict[str, Any]] = []
    for name, fn in backends.items():
        with torch.inference_mode():
            diff = float((fn(x_max[:4]).float() - reference).abs().max())
        row: dict[str, Any] = {"backend": name, "max_abs_diff": diff}
        for b in args.batch:
            x = x_max[:b]
            with torch.inference_mode():
                times = common.timed(functools.partial(fn, x), args.seconds, warmup=2)
            row[f"b{b}"] = b / statistics.median(times)
        rows.append(row)
        print(
            f"  {name}: " + ", ".join(f"batch {b} {row[f'b{b}']:.1f}" for b in args.batch) + " images/s",
            file=sys.stderr,
            flush=True,
        )
    best_eager = max(rows[0][f"b{b}"] for b in args.batch)
    for row in rows:
        row["x_eager_best"] = max(row[f"b{b}"] for b in args.batch) / best_eager
    print()
    print(
        common.format_table(
            rows,
            [
                ("backend", "backend"),
                *[(f"b{b}", f"batch {b} img/s") for b in args.batch],
                ("x_eager_best", "best / eager's best"),
                ("max_abs_diff", "max abs diff"),
            ],
        )
    )
    print("\none-time build: " + ", ".join(f"{k} {v:.1f} s" for k, v in build_s.items()))
    out = common.write_json(
        "encoder",
        {"machine": info, "load_average_end": common.machine_info()["load_average"], "build_s": build_s, "rows": rows},
        args.json,
    )
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
