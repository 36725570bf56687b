"""What the finer map costs the encoder: Lite0's 7 x 7 map against its 14 x 14 one (output stride 16).

    python -m bench.finer_map                  # batch 32, 7 interleaved rounds, ~1 min
    python -m bench.finer_map --batch 8 --rounds 11

Both encoders run as the runtime runs them (the exported fp32 graph on ONNX Runtime, one
session each through OnnxEncoder, the same thread count), on the same random (B, 3, 224, 224) input, in
alternating rounds so that a noisy neighbour slows both alike; the ratio of the medians is the
figure (docs/explain.md, "A finer map").
"""

from __future__ import annotations

import statistics
import time

from . import common

ENCODERS = ("efficientnet_lite0", "efficientnet_lite0_d16")


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("finer_map", __doc__ or "", checkpoint=False)
    p.add_argument("--batch", type=int, default=32, help="images per forward (default 32)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    args = p.parse_args(argv)
    common.apply_threads(args)
    import torch

    from captioner.encoders import build_encoder
    from captioner.model.onnx_encoder import OnnxEncoder

    info = common.machine_info()
    common.header("finer map: encoder cost", info)
    encoders = {name: OnnxEncoder(build_encoder(name, spatial=True), 224, cache_dir=False) for name in ENCODERS}
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in ENCODERS}
    shapes = {name: tuple(encoder(x).shape) for name, encoder in encoders.items()}  # warm-up
    for _ in range(args.rounds):
        for name, encoder in encoders.items():
            start = time.perf_counter()
            encoder(x)
            times[name].append(time.perf_counter() - start)
    rows = [
        {"encoder": n, "map": f"{shapes[n][1]} x {shapes[n][2]}", "images/s": args.batch / statistics.median(times[n])}
        for n in ENCODERS
    ]
    ratio = statistics.median(times[ENCODERS[1]]) / statistics.median(times[ENCODERS[0]])
    print(common.format_table(rows, [("encoder", "encoder"), ("map", "map (N x C)"), ("images/s", "images/s")]))
    print(
        f"14 x 14 / 7 x 7 encoder time: {ratio:.2f}x (batch {args.batch}, {args.rounds} rounds; {common.load_note()})"
    )
    path = common.write_json("finer_map", {"machine": info, "rows": rows, "time_ratio": ratio}, args.json)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
