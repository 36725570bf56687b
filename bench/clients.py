"""Throughput against clients: the service, the naive server and the encoder-only limits.

    python -m bench.clients                                  # 1/4/16/32/64 clients, ~6-8 min
    python -m bench.clients --seconds 8 --plot docs/clients.png
    python -m bench.clients --variant threads1=--threads=1 --variant blas2=env:OPENBLAS_NUM_THREADS=2

One run, so the ratios hold on a shared machine: the encoder-only limits
(``common.encoder_limit``) of the checkpoint (its own precision) and of ``--int8-checkpoint``
(default weights/pooled, int8), measured at the start and at the end and averaged; the
in-process time to caption one JPEG (greedy); ``captioner serve`` at each ``--clients``
level greedy, and at 32 clients with beam 3; the naive server (``bench/naive_server.py``)
at each level; then each ``--variant NAME=ARG[,ARG...]`` (extra ``captioner serve``
arguments; ``env:NAME=VALUE`` sets the server's environment) at ``--variant-clients`` (32) greedy, for
A/B comparisons. Prints one table, writes
``bench/results/clients.json``; ``--plot`` draws images/s against clients.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import common, serve

LEVELS = (1, 4, 16, 32, 64)


def _variant(text: str) -> tuple[str, list[str]]:
    """``NAME=ARG[,ARG...]`` -> (NAME, [ARG, ...])."""
    name, _, extra = text.partition("=")
    return name, [a for a in extra.split(",") if a]


def _service(ckpt: Path, extra: list[str]) -> serve.Server:
    """``captioner serve`` with ``extra`` arguments; an ``env:NAME=VALUE`` one sets its environment."""
    env = dict(a[4:].split("=", 1) for a in extra if a.startswith("env:"))
    return serve.start_service(ckpt, *(a for a in extra if not a.startswith("env:")), env=env)


def _levels(server: serve.Server, name: str, images: Path, jpeg: bytes, runs: list, args) -> list[dict]:
    rows = []
    for beam, clients in runs:
        url = f"{server.url}/v1/captions" + (f"?beam_size={beam}" if beam > 1 else "")
        r = serve.level(url, images, jpeg, clients, args, 120.0)
        lat = r.pop("latencies_ms", [])
        row = {"server": name, "beam": beam, "clients": clients, "images_per_s": r["images_per_s"]}
        row.update({f"p{q}_ms": common.percentile(lat, q) for q in (50, 99)})
        row.update(steady=r["steady"], errors=r["errors"])
        rows.append(row)
        print(f"  {name} beam {beam} x{clients}: {row['images_per_s']:.1f}/s p50 {row['p50_ms']}", file=sys.stderr)
    return rows


def _plot(rows: list[dict], limits: dict[str, float], labels: dict[str, str], path: str) -> None:
    fig, ax = common.pyplot().subplots(figsize=(7, 4), dpi=100)
    names = dict.fromkeys(r["server"] for r in rows)  # service, naive, then the variants
    for name, style in zip(names, ("o-", "s-", "^-", "v-", "d-"), strict=False):
        pts = sorted((r["clients"], r["images_per_s"]) for r in rows if r["server"] == name and r["beam"] == 1)
        if len(pts) > 1:
            ax.plot(*zip(*pts, strict=True), style, label=labels.get(name, f"captioner serve, {name}"))
    for (key, value), ls in zip(limits.items(), ("--", ":"), strict=False):
        ax.axhline(value, ls=ls, color="grey", label=f"encoder-only limit, {key} ({value:.0f}/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(LEVELS, [str(c) for c in LEVELS])
    ax.set_xlabel("concurrent clients (closed loop, one 640x480 JPEG each)")
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("throughput vs clients, one run on 2 shared cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("clients", __doc__)
    p.add_argument("--int8-checkpoint", default="weights/pooled", help="checkpoint for the int8 limit")
    p.add_argument("--clients", type=int, nargs="+", default=list(LEVELS))
    p.add_argument("--seconds", type=float, default=8.0, help="window per level (default 8)")
    p.add_argument("--warmup", type=float, default=1.5, help="load before each window (default 1.5 s)")
    p.add_argument("--no-naive", action="store_true", help="leave the naive server out")
    p.add_argument("--variant", action="append", default=[], help="NAME=ARG[,ARG...]: another service, greedy")
    p.add_argument(
        "--variant-clients", type=int, nargs="+", default=[32], help="the variants' client levels (default 32)"
    )
    p.add_argument("--plot", metavar="PNG")
    args = p.parse_args(argv)
    info, ckpt, images, jpeg = common.serving_start(args, "throughput vs clients")
    from captioner import Captioner

    models = {"own": Captioner.load(ckpt), "int8": Captioner.load(Path(args.int8_checkpoint), precision="int8")}
    names = {"own": f"{models['own'].precision} ({ckpt.name})", "int8": f"int8 ({Path(args.int8_checkpoint).name})"}
    limits = {k: [common.encoder_limit(m)["images_per_s"]] for k, m in models.items()}
    one_s = common.one_image_s(models["own"], jpeg)
    del models["int8"]
    rows = []
    runs = [(1, c) for c in args.clients] + [(3, 32)]
    server = _service(ckpt, [])
    try:
        rows += _levels(server, "service", images, jpeg, runs, args)
    finally:
        server.stop()
    if not args.no_naive:
        naive = serve.start_naive(ckpt)
        try:
            rows += _levels(naive, "naive", images, jpeg, [(1, c) for c in args.clients], args)
        finally:
            naive.stop()
    variants = [_variant(v) for v in args.variant]
    for name, extra in variants:
        server = _service(ckpt, extra)
        try:
            rows += _levels(server, name, images, jpeg, [(1, c) for c in args.variant_clients], args)
        finally:
            server.stop()
    limits["own"].append(common.encoder_limit(models["own"])["images_per_s"])
    models["int8"] = Captioner.load(Path(args.int8_checkpoint), precision="int8")
    limits["int8"].append(common.encoder_limit(models["int8"])["images_per_s"])
    mean = {names[k]: sum(v) / len(v) for k, v in limits.items()}
    end = common.machine_info()["load_average"]
    cols = ["server", "beam", "clients", "images_per_s", "p50_ms", "p99_ms", "steady"]
    shown = [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print(common.format_table(shown, [(c, c.replace("_", " ")) for c in cols]))
    print(f"\nencoder-only limits (start, end): {limits}; in-process one JPEG {1000 * one_s:.1f} ms")
    print(f"load average {info['load_average']} -> {end}")
    if args.plot:
        labels = {"service": f"captioner serve ({ckpt.name}, {names['own'].split()[0]})", "naive": "naive server"}
        for name, extra in variants:  # labelled with its arguments
            labels[name] = " ".join(["captioner serve", *(a for a in extra if not a.startswith("env:"))])
        _plot(rows, mean, labels, args.plot)
    payload = {"machine": info, "load_average_end": end, "checkpoint": str(ckpt), "encoder_limits": limits}
    payload.update(encoder_limit_mean=mean, in_process_one_image_s=one_s, rows=rows)
    out = common.write_json("clients", payload, args.json)
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
