"""A closed-loop HTTP load generator: N clients, each sending one image, waiting for the
answer, and sending the next, for a fixed time. Runs in its own process.

    python -m bench.loadgen --url 'http://127.0.0.1:8000/v1/captions?beam_size=1' \
        --images bench/.cache/jpegs-16-640x480-s0 --clients 32 --seconds 8

It speaks HTTP/1.1 over asyncio streams with keep-alive connections (one per client) and
pre-built multipart bodies (field ``file``), so the client costs little CPU next to the
server it measures. The measurement window opens after ``--warmup`` seconds and once
every client has had its first answer (the server's queue has reached its steady depth),
and lasts ``--seconds``; only requests that *finish* inside it count, and whatever is
still in flight when it closes is abandoned.
Prints one JSON object: completed, errors, images/s and latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

BOUNDARY = "----captionerbench7MA4YWxkTrZu0gW"


def multipart_request(host: str, port: int, target: str, filename: str, data: bytes) -> bytes:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: captioner-bench\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: keep-alive\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server wants to close) for one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() == "close"


async def run(
    url: str,
    images: list[tuple[str, bytes]],
    clients: int,
    seconds: float,
    warmup: float,
    timeout: float,
    max_wait: float,
) -> dict:
    """Closed-loop load. The measurement window opens ``warmup`` seconds after the start, and
    not before every client has had its first answer (so the queue has reached its steady
    depth), then lasts ``seconds``; ``max_wait`` bounds the wait for first answers."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    requests = [multipart_request(host, port, target, name, data) for name, data in images]
    start = time.perf_counter()
    done: list[tuple[float, float]] = []  # (sent, answered) of every successful request
    failures: list[tuple[float, str]] = []  # (when, what)
    first_answer = [False] * clients
    all_answered = asyncio.Event()
    stop = asyncio.Event()

    async def client(i: int) -> None:
        k = i
        reader = writer = None
        while not stop.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                req = requests[k % len(requests)]
                k += clients
                t0 = time.perf_counter()
                writer.write(req)
                status, body, close = await asyncio.wait_for(read_response(reader), timeout)
                t1 = time.perf_counter()
                if status == 200 and b"caption" in body:
                    done.append((t0, t1))
                else:
                    failures.append((t1, f"HTTP {status}"))
                if not first_answer[i]:
                    first_answer[i] = True
                    if all(first_answer):
                        all_answered.set()
                if close:
                    writer.close()
                    reader = writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                failures.append((time.perf_counter(), type(e).__name__))
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_answered.wait(), max_wait)
    steady = all_answered.is_set()
    window_start = max(start + warmup, time.perf_counter())
    await asyncio.sleep(max(0.0, window_start - time.perf_counter()) + seconds)
    window_end = window_start + seconds
    stop.set()  # whatever is in flight now is abandoned
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    lat_ms = np.asarray([(t1 - t0) * 1000.0 for t0, t1 in done if window_start <= t1 <= window_end])
    errors: dict[str, int] = {}
    for when, what in failures:
        if window_start <= when <= window_end:
            errors[what] = errors.get(what, 0) + 1
    pct = (lambda q: round(float(np.percentile(lat_ms, q)), 1)) if len(lat_ms) else (lambda q: None)
    return {
        "clients": clients,
        "seconds": seconds,
        "warmup_s": round(window_start - start, 2),
        "steady": steady,
        "completed": len(lat_ms),
        "errors": errors,
        "images_per_s": round(len(lat_ms) / seconds, 2),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "mean_ms": round(float(lat_ms.mean()), 1) if len(lat_ms) else None,
        "latencies_ms": [round(float(v), 2) for v in lat_ms],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True, help="the captioning endpoint, with query options")
    p.add_argument("--images", required=True, help="a folder of .jpg files sent in turn")
    p.add_argument("--clients", type=int, default=1, help="concurrent clients (connections)")
    p.add_argument("--seconds", type=float, default=8.0, help="length of the measurement window")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the window opens")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    p.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help="longest wait for every client's first answer before the window opens anyway",
    )
    args = p.parse_args(argv)
    files = sorted(Path(args.images).glob("*.jpg"))
    if not files:
        print(f"error: no .jpg files in {args.images}", file=sys.stderr)
        return 1
    images = [(f.name, f.read_bytes()) for f in files]
    result = asyncio.run(run(args.url, images, args.clients, args.seconds, args.warmup, args.timeout, args.max_wait))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
