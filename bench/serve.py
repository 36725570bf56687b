"""HTTP serving throughput and latency: our service against a naive server and the encoder-only limit.

    python -m bench.serve                          # 1/8/32/64 clients, greedy and beam 3, ~8-15 min
    python -m bench.serve --clients 32 --beams 1 --seconds 20
    python -m bench.serve --service-arg=--max-batch-size=32 --service-arg=--threads=1

Three things are measured in one run, on the same machine, against the same checkpoint:

(a) **our service**: ``captioner serve`` (batching, decode pool, ONNX Runtime encoder);
(b) **a naive server** (``bench/naive_server.py``): one eager PyTorch forward per request
    at batch 1, the way tutorials write it;
(c) **the encoder-only limit**: the fastest encoder forward on pre-decoded batches in
    this process (best of batch 8/16/32), measured before and after the HTTP runs.

Each server runs in its own process; the load comes from ``bench/loadgen.py`` in another
process: closed-loop clients on loopback, each posting one 640x480 JPEG (multipart) and
waiting for the caption. A level's window opens after ``--warmup`` and once every client
has had an answer (steady queue depth), and lasts ``--seconds``; afterwards the server
works off the abandoned requests (a drain request) before the next level. Each level runs
``--rounds`` windows per server, the servers taking turns, and the windows are pooled, so
a change in the machine's load during the run hits both servers. The in-process time to caption
one image (``Captioner.caption`` on JPEG bytes, fast path on) is the reference for the
latency at one client.

Targets (issue "Performance"): at 32 clients our images/s >= 5x the naive server's and
>= 50% of the encoder-only limit; p50 latency at 1 client <= 1.5x the in-process time.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from . import common

PY = sys.executable


class Server:
    """A server subprocess; ``url`` is parsed from the 'listening on http://...' line it prints."""

    def __init__(self, name: str, cmd: list[str], env: dict | None = None, timeout: float = 300.0) -> None:
        self.name = name
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=common.ROOT,
            start_new_session=True,
        )
        self.url: str | None = None
        self.log: list[str] = []
        found = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.log.append(line.rstrip())
                if self.url is None and "listening on http://" in line:
                    self.url = "http://" + line.split("listening on http://", 1)[1].split()[0].rstrip(";,")
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        found.wait(timeout)
        if self.url is None:
            self.stop()
            raise RuntimeError(f"{name} did not start; its output:\n" + "\n".join(self.log[-30:]))
        while time.monotonic() < deadline:  # listening; wait until the model is ready
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{name} never became ready; its output:\n" + "\n".join(self.log[-30:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_service(ckpt: Path, *args: str, env: dict | None = None, name: str = "service") -> Server:
    """``captioner serve`` of ``ckpt`` on a port it picks, warnings only; ``args`` add flags."""
    cmd = [PY, "-m", "captioner", "serve", "--checkpoint", str(ckpt), "--port", "0", "--log-level", "warning"]
    return Server(name, [*cmd, *args], env=env)


def start_naive(ckpt: Path) -> Server:
    """The naive server (``bench/naive_server.py``) of ``ckpt``."""
    return Server("naive", [PY, "-m", "bench.naive_server", "--checkpoint", str(ckpt)])


def load(url: str, images: Path, clients: int, seconds: float, warmup: float, max_wait: float) -> dict:
    """One load-generator run in its own process; returns its JSON result."""
    cmd = [
        PY,
        "-m",
        "bench.loadgen",
        "--url",
        url,
        "--images",
        str(images),
        "--clients",
        str(clients),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        "--max-wait",
        str(max_wait),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, cwd=common.ROOT, timeout=seconds + warmup + max_wait + 120
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pool(runs: list[dict], **labels) -> dict:
    """One row from several windows of the same level: images/s over all of them, latency
    percentiles of all their requests together."""
    lat = [v for r in runs for v in r.pop("latencies_ms")]
    seconds = sum(r["seconds"] for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        **labels,
        "images_per_s": sum(r["completed"] for r in runs) / seconds,
        "p50_ms": common.percentile(lat, 50),
        "p95_ms": common.percentile(lat, 95),
        "p99_ms": common.percentile(lat, 99),
        "completed": len(lat),
        "errors": errors,
        "steady": all(r["steady"] for r in runs),
        "windows": runs,
    }


def drain(url: str, jpeg: bytes, timeout: float = 600.0) -> float:
    """Wait until the server has worked off the requests the load generator abandoned: one
    request queued behind them comes back. Returns the seconds it took."""
    from .loadgen import BOUNDARY

    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="drain.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
    except OSError as e:
        print(f"  (drain request failed: {e})", file=sys.stderr)
    return time.monotonic() - t


def level(url: str, images: Path, jpeg: bytes, clients: int, args, max_wait: float) -> dict:
    """One load level (``args.seconds`` after ``args.warmup``), then its drain; the load's result."""
    r = load(url, images, clients, args.seconds, args.warmup, max_wait)
    drain(url, jpeg)
    return r


def in_process(
    ckpt: Path, jpeg: bytes, beams: list[int], seconds: float, precision: str | None = None
) -> tuple[dict, dict]:
    """(seconds to caption one JPEG in this process per beam size, the encoder-only limit)."""
    from captioner import Captioner
    from captioner.options import CaptionOptions

    model = Captioner.load(ckpt, precision=precision)
    one = {}
    for beam in beams:
        options = CaptionOptions(beam_size=beam)
        one[beam] = statistics.median(common.timed(functools.partial(model.caption, jpeg, options), seconds, warmup=2))
    return one, common.encoder_limit(model, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("serve", __doc__)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64], help="concurrency levels")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3], help="beam sizes (1 = greedy)")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement window per level and round (default 5)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="windows per level and server, the servers taking turns; pooled (default 1; 2+ on a busy machine)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=1.5,
        help="load before each window, at least until every client had an answer (default 1.5 s)",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help="longest wait for every client's first answer before a window opens anyway (default 60 s)",
    )
    p.add_argument("--images", type=int, default=16, help="distinct 640x480 JPEGs sent in turn (default 16)")
    p.add_argument("--servers", nargs="+", default=["service", "naive"], choices=["service", "naive"])
    p.add_argument(
        "--service-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `captioner serve` (repeatable), e.g. --service-arg=--max-batch-size=32",
    )
    args = p.parse_args(argv)
    common.apply_threads(args)
    info = common.machine_info()
    common.header("serve: HTTP images/s and latency", info)
    ckpt = common.resolve_checkpoint(args.checkpoint)
    images = common.jpeg_folder(args.images)
    jpeg = sorted(images.glob("*.jpg"))[0].read_bytes()
    print(f"checkpoint {ckpt}; images {images}", file=sys.stderr)

    servers: dict[str, Server] = {}
    rows: list[dict] = []
    try:
        if "service" in args.servers:
            servers["service"] = start_service(ckpt, *args.service_arg)
        if "naive" in args.servers:
            servers["naive"] = start_naive(ckpt)
        print("servers ready: " + ", ".join(f"{k} {s.url}" for k, s in servers.items()), file=sys.stderr)
        one_image, limit_start = in_process(ckpt, jpeg, args.beams, 3.0)
        print(
            "in-process caption of one image: "
            + ", ".join(f"beam {b}: {1000 * s:.1f} ms" for b, s in one_image.items())
            + f"; encoder-only limit {limit_start['images_per_s']:.1f} images/s",
            file=sys.stderr,
            flush=True,
        )
        for beam in args.beams:
            for clients in args.clients:
                runs: dict[str, list[dict]] = {name: [] for name in servers}
                for _ in range(args.rounds):  # servers in turn, so a change of load hits both
                    for name, server in servers.items():
                        url = f"{server.url}/v1/captions?beam_size={beam}"
                        r = load(url, images, clients, args.seconds, args.warmup, args.max_wait)
                        r["drain_s"] = round(drain(url, jpeg), 1)
                        runs[name].append(r)
                        print(
                            f"  {name:8s} beam {beam} clients {clients:3d}: {r['images_per_s']:7.1f} images/s, "
                            f"p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, errors {r['errors'] or 0}"
                            + ("" if r["steady"] else " (not every client was answered before the window)"),
                            file=sys.stderr,
                            flush=True,
                        )
                for name, rs in runs.items():
                    rows.append(pool(rs, server=name, beam=beam, clients=clients))
    finally:
        for s in servers.values():
            s.stop()
    _, limit_end = in_process(ckpt, jpeg, [], 3.0)
    limit = (limit_start["images_per_s"] + limit_end["images_per_s"]) / 2

    naive = {(r["beam"], r["clients"]): r["images_per_s"] for r in rows if r["server"] == "naive"}
    for r in rows:
        base = naive.get((r["beam"], r["clients"]))
        r["x_naive"] = r["images_per_s"] / base if base else None
        r["pct_encoder_limit"] = 100.0 * r["images_per_s"] / limit
        r["p50_x_in_process"] = r["p50_ms"] / (1000 * one_image[r["beam"]]) if r["p50_ms"] else None
    rows.append(
        {"server": "encoder-only limit", "beam": "-", "clients": "-", "images_per_s": limit, "pct_encoder_limit": 100.0}
    )

    targets = {}
    svc = {(r["beam"], r["clients"]): r for r in rows if r["server"] == "service"}
    if (1, 32) in svc:
        r = svc[(1, 32)]
        if r.get("x_naive") is not None:
            targets["service_32_clients_vs_naive (>= 5x)"] = round(r["x_naive"], 2)
        targets["service_32_clients_pct_of_encoder_limit (>= 50%)"] = round(r["pct_encoder_limit"], 1)
    if (1, 1) in svc and svc[(1, 1)]["p50_x_in_process"] is not None:
        targets["p50_1_client_vs_in_process (<= 1.5x)"] = round(svc[(1, 1)]["p50_x_in_process"], 2)

    print()
    print(
        common.format_table(
            rows,
            [
                ("server", "server"),
                ("beam", "beam"),
                ("clients", "clients"),
                ("images_per_s", "images/s"),
                ("p50_ms", "p50 ms"),
                ("p95_ms", "p95 ms"),
                ("p99_ms", "p99 ms"),
                ("x_naive", "x naive"),
                ("pct_encoder_limit", "% of encoder limit"),
                ("p50_x_in_process", "p50 / in-process"),
            ],
        )
    )
    print("\nin-process caption of one JPEG: " + ", ".join(f"beam {b} {1000 * s:.1f} ms" for b, s in one_image.items()))
    print(
        f"encoder-only limit: {limit_start['images_per_s']:.1f} (start) / {limit_end['images_per_s']:.1f} (end) "
        f"images/s, best: {limit_start['backend']} at batch {limit_start['batch_size']}; "
        f"{limit_start['by_backend_and_batch']}"
    )
    for k, v in targets.items():
        print(f"target {k}: {v}")
    out = common.write_json(
        "serve",
        {
            "machine": info,
            "load_average_end": common.machine_info()["load_average"],
            "checkpoint": str(ckpt),
            "service_args": args.service_arg,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "in_process_one_image_s": one_image,
            "encoder_limit": {"start": limit_start, "end": limit_end, "mean": limit},
            "rows": rows,
            "targets": targets,
        },
        args.json,
    )
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
