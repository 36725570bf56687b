"""Overload run: 256 concurrent clients for 30 s against a server with small queue limits.

    python bench/overload.py                         # starts its own server (small random model)
    python bench/overload.py --clients 256 --seconds 30 --queue-size 16 --json out.json
    python bench/overload.py --url http://127.0.0.1:8000 --pid 1234 --api-key KEY   # an existing server

Loopback only. What it checks and prints:

1. during the load: every answer is 200 (with a caption) or 503 with a Retry-After header;
   no other status, no client-side timeout or refused connection;
2. after it: 20 sequential requests all succeed, at about the latency of an idle server;
3. memory: the server's resident memory at rest before, at its peak, right after, and
   10 s after the load.

Clients ignore Retry-After by default (each sends its next request at once: the worst
case); ``--retry-after`` makes them wait what the server asked (capped at 1 s).
Results for this project are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

from overloadkit import rss_kb, run_load, serves_normally  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=256, help="concurrent clients (default 256)")
    p.add_argument("--seconds", type=float, default=30.0, help="how long the load lasts (default 30)")
    p.add_argument("--queue-size", type=int, default=16, help="server queue limit in images (default 16)")
    p.add_argument("--max-batch-size", type=int, default=8, help="server batch size (default 8)")
    p.add_argument("--retry-after", action="store_true", help="clients honour Retry-After (capped at 1 s)")
    p.add_argument("--url", help="an already running server instead of starting one")
    p.add_argument("--pid", type=int, help="its process id, to read its memory (with --url)")
    p.add_argument("--api-key", help="its API key (with --url)")
    p.add_argument("--checkpoint", help="checkpoint for the server it starts (default: a small random one)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    from relkit import API_KEY, build_checkpoint, launch_server, wait_ready

    server = None
    workdir = Path(tempfile.mkdtemp(prefix="overload-"))
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    else:
        ckpt = Path(args.checkpoint) if args.checkpoint else build_checkpoint(workdir / "ckpt")
        log = workdir / "server.log"
        server = wait_ready(
            launch_server(
                ckpt,
                log,
                "--queue-size",
                str(args.queue_size),
                "--max-batch-size",
                str(args.max_batch_size),
                "--max-files",
                str(min(4, args.queue_size)),
            ),
            log,
        )
        url, pid, headers = server.url, server.proc.pid, {"Authorization": f"Bearer {API_KEY}"}
        print(f"server {url} (pid {pid}), queue {args.queue_size} images, batch {args.max_batch_size}, log {log}")
    try:
        ok, idle_s = serves_normally(url, headers, n=10)
        assert ok == 10, "the server does not answer normally before the load"
        rss0 = rss_kb(pid) if pid else None
        print(f"idle: single request {idle_s * 1000:.0f} ms; RSS {rss0 / 1024 if rss0 else float('nan'):.0f} MiB")
        print(
            f"load: {args.clients} clients for {args.seconds:g} s "
            f"({'honouring' if args.retry_after else 'ignoring'} Retry-After) ...",
            flush=True,
        )
        res = run_load(
            url, headers, clients=args.clients, seconds=args.seconds, pid=pid, retry_after=args.retry_after, timeout=120
        )
        rss_end = rss_kb(pid) if pid else None
        time.sleep(1.0)
        ok_after, after_s = serves_normally(url, headers, n=20)
        time.sleep(9.0)
        rss_10s = rss_kb(pid) if pid else None
        s = res.summary()
        s.update(
            idle_request_ms=round(idle_s * 1000, 1),
            after_request_ms=round(after_s * 1000, 1),
            after_ok=f"{ok_after}/20",
            rss_mib_before=rss0 and round(rss0 / 1024, 1),
            rss_mib_end=rss_end and round(rss_end / 1024, 1),
            rss_mib_10s_after=rss_10s and round(rss_10s / 1024, 1),
            queue_size=args.queue_size,
            retry_after_honoured=args.retry_after,
        )
        print(json.dumps(s, indent=2))
        only_200_503 = set(res.statuses) <= {200, 503}
        verdict = (
            only_200_503
            and res.missing_retry_after == 0
            and not res.client_errors
            and res.bad_bodies == 0
            and ok_after == 20
        )
        print(
            f"verdict: {'PASS' if verdict else 'FAIL'} - statuses {s['statuses']}, "
            f"503 without Retry-After {res.missing_retry_after}, client errors {s['client_errors']}, "
            f"after: {ok_after}/20 ok at {after_s * 1000:.0f} ms (idle {idle_s * 1000:.0f} ms)"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(s, indent=2) + "\n")
        return 0 if verdict else 1
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
