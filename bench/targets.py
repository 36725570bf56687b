"""The performance targets in one run: fp32 against int8, every figure as a ratio measured
side by side (docs/performance.md, "int8 encoder").

    python -m bench.targets                      # ~4-6 min on 2 busy cores
    python -m bench.targets --seconds 6 --images 256 --plot docs/targets.png

Measures, in this order (each part short, so the load changes little in between):

1. the encoder-only limit (``common.encoder_limit``) of an fp32 and an int8 model;
2. in-process time to caption one JPEG (greedy, each precision);
3. ``captioner serve --precision P`` for P in fp32, int8: 1 client greedy, 32 clients
   greedy, 32 clients beam 3 (``bench.serve.load``), then the naive server
   (``bench/naive_server.py``, one eager forward per request) at 32 clients;
4. folder captioning (``bench.folder.run_folder``) at each precision;
5. the two encoder limits again; each limit is the mean of its two measurements.

Prints one table (the figure, what it is divided by, the ratio, the target) and writes it
with the raw figures to ``bench/results/targets.json``; ``--plot`` draws a bar chart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import common, folder, serve

PRECISIONS = ("fp32", "int8")


def _serve_rows(ckpt: Path, images: Path, jpeg: bytes, precision: str, args: argparse.Namespace) -> dict:
    """images/s and p50 of the service at this precision: (beam, clients) -> result."""
    server = serve.start_service(ckpt, "--precision", precision, name=f"service {precision}")
    out = {}
    try:
        for beam, clients in ((1, 1), (1, 32), (3, 32)):
            url = f"{server.url}/v1/captions?beam_size={beam}"
            r = serve.level(url, images, jpeg, clients, args, 60.0)
            r.pop("latencies_ms", None)
            out[(beam, clients)] = r
            print(
                f"  {precision} beam {beam} clients {clients}: {r['images_per_s']:.1f} images/s, p50 {r['p50_ms']} ms",
                file=sys.stderr,
                flush=True,
            )
    finally:
        server.stop()
    return out


def _naive_rate(ckpt: Path, images: Path, jpeg: bytes, args: argparse.Namespace) -> float:
    """images/s of the naive server (one eager forward per request) at 32 clients, greedy."""
    server = serve.start_naive(ckpt)
    try:
        r = serve.level(f"{server.url}/v1/captions", images, jpeg, 32, args, 120.0)
    finally:
        server.stop()
    print(f"  naive clients 32: {r['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    return float(r["images_per_s"])


def _row(what: str, precision: str, value: float, base: float, base_name: str, target: str, ok: bool) -> dict:
    return {
        "figure": what,
        "precision": precision,
        "value": round(value, 1),
        "relative_to": base_name,
        "base": round(base, 1),
        "ratio": round(value / base, 2) if base else None,
        "target": target,
        "met": "yes" if ok else "no",
    }


def _table(limit: dict, one: dict, svc: dict, fold: dict, naive: float) -> list[dict]:
    f32 = limit["fp32"]
    rows = [
        _row("encoder-only limit, images/s", "fp32", f32, f32, "fp32 limit", "-", True),
        _row("encoder-only limit, images/s", "int8", limit["int8"], f32, "fp32 limit", "(faster)", limit["int8"] > f32),
    ]
    for p in PRECISIONS:
        v = svc[p][(1, 32)]["images_per_s"]
        target, need = (">= 1.2x", 1.2) if p == "int8" else (">= 0.7x", 0.7)
        rows.append(_row("service, 32 clients greedy, images/s", p, v, f32, "fp32 limit", target, v >= need * f32))
    for p in PRECISIONS:
        v = svc[p][(1, 32)]["images_per_s"]
        rows.append(_row("service vs naive, 32 clients greedy", p, v, naive, "naive server", ">= 12x", v >= 12 * naive))
    for p in PRECISIONS:
        v = fold[p]["images_per_s"]
        rows.append(_row("folder captioning, images/s", p, v, limit[p], f"{p} limit", ">= 0.85x", v >= 0.85 * limit[p]))
    for p in PRECISIONS:
        v = svc[p][(1, 1)]["p50_ms"]
        base = 1000 * one[p]
        rows.append(_row("p50 at 1 client, ms", p, v, base, "in-process ms", "<= 1.3x", v <= 1.3 * base))
    for p in PRECISIONS:
        v, g = svc[p][(3, 32)]["images_per_s"], svc[p][(1, 32)]["images_per_s"]
        rows.append(_row("service, 32 clients beam 3, images/s", p, v, g, "greedy", ">= 0.7x", v >= 0.7 * g))
    return rows


def _plot(rows: list[dict], path: str) -> None:
    plt = common.pyplot()
    bars = [r for r in rows if r["figure"].endswith("images/s") and "beam" not in r["figure"]]
    labels = [f"{r['figure'].split(',')[0]}\n{r['precision']}" for r in bars]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    colours = ["#4c72b0" if r["precision"] == "fp32" else "#dd8452" for r in bars]
    ax.bar(range(len(bars)), [r["value"] for r in bars], color=colours)
    ax.axhline(bars[0]["value"], color="#4c72b0", ls="--", lw=1, label="fp32 encoder-only limit")
    ax.axhline(1.2 * bars[0]["value"], color="#dd8452", ls=":", lw=1, label="1.2x fp32 limit (int8 service target)")
    ax.set_xticks(range(len(bars)), labels, fontsize=7)
    ax.set_ylabel("images/s")
    ax.legend(fontsize=7)
    ax.set_title("fp32 vs int8, one run (ratios under load)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("targets", __doc__)
    p.add_argument("--seconds", type=float, default=4.0, help="measurement window per service level (default 4)")
    p.add_argument("--warmup", type=float, default=1.5, help="load before each window (default 1.5 s)")
    p.add_argument("--images", type=int, default=128, help="JPEGs in the folder run (default 128)")
    p.add_argument("--plot", metavar="PNG", help="also draw the images/s figures as a bar chart")
    args = p.parse_args(argv)
    info, ckpt, images, jpeg = common.serving_start(args, "targets: fp32 vs int8")
    from captioner import Captioner

    folder_dir = common.jpeg_folder(args.images)
    models = {pr: Captioner.load(ckpt, precision=pr) for pr in PRECISIONS}
    for pr, m in models.items():
        print(f"{pr}: {m.precision}, {m.describe()['runtime']}", file=sys.stderr, flush=True)
    limits: dict[str, list[float]] = {pr: [common.encoder_limit(m)["images_per_s"]] for pr, m in models.items()}
    one = {pr: common.one_image_s(m, jpeg) for pr, m in models.items()}
    svc = {pr: _serve_rows(ckpt, images, jpeg, pr, args) for pr in PRECISIONS}
    naive = _naive_rate(ckpt, images, jpeg, args)
    fold_args = argparse.Namespace(batch_size=16, workers=2, beam=1)
    fold = {pr: folder.run_folder(m, folder_dir, fold_args) for pr, m in models.items()}
    for pr, m in models.items():
        limits[pr].append(common.encoder_limit(m)["images_per_s"])
    limit = {pr: sum(v) / len(v) for pr, v in limits.items()}
    rows = _table(limit, one, svc, fold, naive)
    cols = [(k, k.replace("_", " ")) for k in ("figure", "precision", "value", "relative_to", "base", "ratio")]
    print()
    print(common.format_table(rows, [*cols, ("target", "target"), ("met", "met")]))
    end = common.machine_info()["load_average"]
    print(f"\nload average {info['load_average']} -> {end}; encoder limits (start, end): {limits}")
    if args.plot:
        _plot(rows, args.plot)
    out = common.write_json(
        "targets",
        {
            "machine": info,
            "load_average_end": end,
            "checkpoint": str(ckpt),
            "encoder_limits": limits,
            "in_process_one_image_s": one,
            "service": {pr: {f"beam{b}_clients{c}": r for (b, c), r in v.items()} for pr, v in svc.items()},
            "folder": fold,
            "rows": rows,
        },
        args.json,
    )
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
