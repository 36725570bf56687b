"""Decoding cost: greedy against beam search (3 and 5), for small and large vocabularies.

    python -m bench.decode                      # vocabularies of 100 and 10,000 words, ~1 min
    python -m bench.decode --vocab 100 1000 10000 --seconds 3 --variants pytorch onnxruntime int8 no-onednn

Decoders have the default size (embedding 256, hidden 512, LSTM, W_ih image projection
256) with random weights (``bench.common.synthetic_checkpoint``, graphs exported), fed
random 1280-d features, through the one numpy search (:mod:`captioner.runtime.search`). A random decoder almost never
emits ``<end>``, so every caption runs to ``--max-length`` words (default 12, about a
real caption's length): the figures are per caption of that length.

For each vocabulary and strategy the table gives milliseconds per image when images are
decoded one at a time (batch 1, a lone request) and in a batch of 32 (a loaded service,
a folder run). Variants (``--variants``):

* ``pytorch``: the PyTorch decoder's step (``TorchStep``: the reference path, ``ReferenceCaptioner``);
* ``onnxruntime``: the exported step graphs on ONNX Runtime, one thread (``OnnxStep``: what
  ``Captioner`` runs);
* ``int8``: ``torch.ao.quantization.quantize_dynamic`` on the LSTM and linear layers (as a ``TorchStep``), with
  the share of captions identical to the reference (``agree``; random decoders have tiny
  margins between words, so this is a pessimistic figure);
* ``no-onednn``: PyTorch with oneDNN switched off (``torch.backends.mkldnn.flags``): its
  LSTM sets up a oneDNN primitive on every call, a fixed cost per generation step.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import sys
import warnings
from typing import Any

import numpy as np
import torch

from captioner.runtime import search

from . import common

STRATEGIES = (("greedy", 1), ("beam 3", 3), ("beam 5", 5))
VARIANTS = ("pytorch", "onnxruntime", "int8", "no-onednn")


def run_strategy(step: Any, features: np.ndarray, beam: int, max_length: int) -> list[list[int]]:
    """Each image's caption (word ids) by greedy (``beam`` 1) or beam search over ``step``."""
    if beam == 1:
        return [h.tokens for h in search.sequential(step, features, 1, 2, max_length)]
    return [n[0].tokens for n in search.beam_search(step, features, 1, 2, max_length, beam)]


def variant_context(variant: str):
    if variant == "no-onednn":
        return torch.backends.mkldnn.flags(enabled=False)
    return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("decode", __doc__, checkpoint=False)
    p.add_argument("--vocab", type=int, nargs="+", default=[100, 10000], metavar="V", help="vocabulary sizes")
    p.add_argument("--max-length", type=int, default=12, help="words per caption (default 12)")
    p.add_argument("--batch", type=int, default=32, help="the batched case's batch size (default 32)")
    p.add_argument("--seconds", type=float, default=1.2, help="timing per cell (default 1.2 s)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the variants are timed in turn this many times per cell; medians of all runs (default 3)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=["pytorch", "onnxruntime", "int8"],
        choices=VARIANTS,
        help="decoder variants to time (default pytorch onnxruntime int8)",
    )
    args = p.parse_args(argv)
    common.apply_threads(args)
    warnings.filterwarnings("ignore")  # quantization deprecation notices
    info = common.machine_info()
    common.header("decode: greedy vs beam search", info)

    from captioner import Captioner, ReferenceCaptioner
    from captioner.model.steps import TorchStep

    rows, results = [], []
    features = np.abs(np.random.default_rng(0).standard_normal((args.batch, 1280), dtype=np.float32))  # (B, F)
    for V in args.vocab:
        ckpt = common.synthetic_checkpoint(V, args.max_length)
        fp32 = ReferenceCaptioner.load(ckpt, device="cpu").decoder
        reference = TorchStep(fp32)
        decoders: dict[str, Any] = {"pytorch": reference, "no-onednn": reference}
        if "onnxruntime" in args.variants:
            decoders["onnxruntime"] = Captioner.load(ckpt).decoder_step()
        if "int8" in args.variants:
            decoders["int8"] = TorchStep(
                torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)
            )
        greedy_ms: dict[tuple[str, int], float] = {}
        for name, beam in STRATEGIES:
            reference_ids = run_strategy(reference, features, beam, args.max_length)
            one: dict[str, list[float]] = {v: [] for v in args.variants}
            many: dict[str, list[float]] = {v: [] for v in args.variants}
            for r in range(args.rounds):  # variants interleaved, so drifting load hits all alike
                for variant in args.variants:
                    dec = decoders[variant]
                    kw = {"min_runs": 1, "warmup": 1 if r == 0 else 0}
                    with variant_context(variant):
                        one[variant] += common.timed(
                            functools.partial(run_strategy, dec, features[:1], beam, args.max_length),
                            args.seconds / args.rounds,
                            **kw,
                        )
                        many[variant] += common.timed(
                            functools.partial(run_strategy, dec, features, beam, args.max_length),
                            args.seconds / args.rounds,
                            **kw,
                        )
            for variant in args.variants:
                dec = decoders[variant]
                with variant_context(variant):
                    ids = run_strategy(dec, features, beam, args.max_length)
                ms1 = 1000 * statistics.median(one[variant])
                msb = 1000 * statistics.median(many[variant]) / args.batch
                if beam == 1:
                    greedy_ms[(variant, 1)], greedy_ms[(variant, args.batch)] = ms1, msb
                agree = sum(a == b for a, b in zip(ids, reference_ids)) / len(ids)
                row = {
                    "vocab": V,
                    "strategy": name,
                    "variant": variant,
                    "ms_per_image_b1": ms1,
                    f"ms_per_image_b{args.batch}": msb,
                    "x_greedy_b1": ms1 / greedy_ms[(variant, 1)],
                    f"x_greedy_b{args.batch}": msb / greedy_ms[(variant, args.batch)],
                    "agree_with_reference": agree,
                }
                rows.append(row)
                results.append(row)
                print(
                    f"  V={V} {name} {variant}: {ms1:.2f} ms/img at batch 1, {msb:.2f} ms/img at batch {args.batch}",
                    file=sys.stderr,
                    flush=True,
                )

    b = args.batch
    print()
    print(
        common.format_table(
            rows,
            [
                ("vocab", "vocab"),
                ("strategy", "strategy"),
                ("variant", "decoder"),
                ("ms_per_image_b1", "ms/image, batch 1"),
                ("x_greedy_b1", "x greedy"),
                (f"ms_per_image_b{b}", f"ms/image, batch {b}"),
                (f"x_greedy_b{b}", "x greedy"),
                ("agree_with_reference", "same captions as pytorch"),
            ],
        )
    )
    info_end = common.machine_info()["load_average"]
    out = common.write_json(
        "decode",
        {"machine": info, "load_average_end": info_end, "max_length": args.max_length, "batch": b, "rows": results},
        args.json,
    )
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
