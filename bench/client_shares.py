"""The three holes of the third attack run at full size, against a server with the default limits.

    python bench/client_shares.py                  # all three, results to bench/results/client_shares.json
    python bench/client_shares.py --only webp      # webp | unread | slow

Starts ``captioner serve`` on loopback with the small reliability checkpoint and the
service's default limits (40 Mpx per image, 16 files, 32 MiB bodies, 1000 connections;
an API key), and for each attack measures the time, the server's memory (its own and its
decode workers') and what a normal client at another address (127.0.0.2) saw meanwhile:

* ``webp``: requests of 16 lossless WebP images of 6324x6324 (40 Mpx each, a few kB in
  all): one alone, then five at once from one address with a normal request beside them;
  then the largest request that fits (5 such images, 200 Mpx), five at once;
* ``unread``: 1000 connections ask for the 1.5 MB Swagger bundle (8 pipelined requests
  each) and never read; /healthz, /readyz and a caption request are made meanwhile;
* ``slow``: 8 connections declare a 32 MiB body and send nothing, then 9 chunked uploads
  send one byte a second; a normal upload is made meanwhile.

Loopback only; every step stops by itself. Results for this project: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402
from relkit import API_KEY, build_checkpoint, launch_server, wait_ready  # noqa: E402

OTHER = "127.0.0.2"
DEFAULTS = ("--max-pixels", "40000000", "--max-files", "16", "--queue-size", "128", "--max-body-bytes", "33554432")


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(the server's RSS, its children's RSS summed) in MiB, from /proc."""

    def rss(p: int) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    children = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    return rss(pid), sum(rss(c) for c in children)


class Sampler:
    """Peak server and decode-worker RSS while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stop = pid, (0.0, 0.0), threading.Event()

    def __enter__(self) -> Sampler:
        def run() -> None:
            while not self.stop.wait(0.05):
                now = tree_rss_mb(self.pid)
                self.peak = (max(self.peak[0], now[0]), max(self.peak[1], now[1]))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def client(url: str, source: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(
        base_url=url,
        timeout=120,
        headers={"Authorization": f"Bearer {API_KEY}"},
        transport=httpx.HTTPTransport(local_address=source),
    )


def photo() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((640, 480), 40).convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def timed_post(url: str, files: list, source: str = "127.0.0.1") -> dict:
    start = time.perf_counter()
    with client(url, source) as c:
        r = c.post("/v1/captions", files=files)
    return {"status": r.status_code, "error": r.json().get("error"), "seconds": round(time.perf_counter() - start, 3)}


def webp_attack(url: str, pid: int) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (6324, 6324), (10, 200, 30)).save(buf, "WEBP", lossless=True, quality=0, method=0)
    data = buf.getvalue()
    normal = [("file", ("photo.jpg", photo(), "image/jpeg"))]
    out: dict = {"webp_bytes": len(data), "normal_alone": timed_post(url, normal, OTHER)}
    for name, count in (("16 images", 16), ("5 images (fits)", 5)):
        files = [("file", (f"{i}.webp", data, "image/webp")) for i in range(count)]
        one = timed_post(url, files)
        with Sampler(pid) as s, ThreadPoolExecutor(6) as pool:
            start = time.perf_counter()
            attackers = [pool.submit(timed_post, url, files) for _ in range(5)]
            time.sleep(0.2)  # the attack is under way
            beside = timed_post(url, normal, OTHER)
            results = [f.result() for f in attackers]
            wall = round(time.perf_counter() - start, 2)
        out[name] = {
            "request_bytes": len(data) * count,
            "one_request": one,
            "five_at_once": results,
            "five_at_once_seconds": wall,
            "normal_request_meanwhile": beside,
            "peak_rss_mb_server_workers": [round(v) for v in s.peak],
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def unread_attack(url: str, pid: int, connections: int = 1000) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = b"GET /docs-assets/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n" * 8
    before = tree_rss_mb(pid)
    socks = []
    start = time.perf_counter()
    with Sampler(pid) as s:
        for _ in range(connections):
            sock = socket.create_connection((host, int(port)), timeout=60)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)
            socks.append(sock)
        opened = round(time.perf_counter() - start, 2)
        seen: dict[str, object] = {}
        for path in ("/healthz", "/readyz"):
            with client(url, OTHER) as c:
                seen[path] = c.get(path).status_code
        seen["caption"] = timed_post(url, [("file", ("photo.jpg", photo(), "image/jpeg"))], OTHER)
        # Reading would let the server write on: count its open connections instead.
        dropped_at = None
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            if server_connections(int(port)) == 0:
                dropped_at = round(time.perf_counter() - start, 2)
                break
            time.sleep(0.5)
        for sock in socks:
            sock.close()
    time.sleep(1)
    after = tree_rss_mb(pid)
    out = {
        "connections": connections,
        "opened_after_s": opened,
        "meanwhile": seen,
        "all_dropped_after_s": dropped_at,
        "rss_mb_before_peak_after": [round(before[0]), round(s.peak[0]), round(after[0])],
    }
    with client(url, OTHER) as c:
        out["healthz_after"] = c.get("/healthz").status_code
    print("unread", json.dumps(out), flush=True)
    return out


def server_connections(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the server's side), from /proc."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


def upload_head(length: int | None) -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: image/jpeg\r\n{size}\r\n"
    ).encode()


def first_status(sock: socket.socket, start: float) -> dict:
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        _, _, body = data.partition(b"\r\n\r\n")
        while b"}" not in body and (chunk := sock.recv(65536)):
            body += chunk
    after_s = round(time.perf_counter() - start, 1)
    if not data:
        return {"status": 0, "error": "closed", "after_s": after_s}
    error = json.loads(body[: body.rindex(b"}") + 1]).get("error", "") if b"}" in body else ""
    return {"status": int(data.split()[1]), "error": error, "after_s": after_s}


def slow_attack(url: str) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    out: dict = {}
    for name, length, count in (("declared 32 MiB, nothing sent", 32 * 1024 * 1024, 8), ("chunked, 1 byte/s", None, 9)):
        socks = [socket.create_connection((host, int(port)), timeout=60) for _ in range(count)]
        start = time.perf_counter()
        for sock in socks:
            sock.sendall(upload_head(length))
        stop = threading.Event()

        def trickle(socks: list[socket.socket] = socks, stop: threading.Event = stop) -> None:
            while not stop.wait(1.0):
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"1\r\nx\r\n")

        if length is None:
            threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)
        beside = timed_post(url, [("file", ("photo.jpg", photo(), "image/jpeg"))], OTHER)
        with ThreadPoolExecutor(count) as pool:
            answers = list(pool.map(first_status, socks, [start] * count))
        stop.set()
        for sock in socks:
            sock.close()
        out[name] = {"answers": answers, "normal_upload_meanwhile": beside}
        print(name, json.dumps(out[name]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("webp", "unread", "slow"), action="append")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "client_shares.json")
    args = p.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # 1000 client sockets
    wanted = args.only or ["webp", "unread", "slow"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(Path(tmp) / "ckpt")
        log = Path(tmp) / "server.log"
        server = wait_ready(launch_server(ckpt, log, *DEFAULTS), log)
        results: dict = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
        try:
            results["rss_mb_idle_server_workers"] = [round(v) for v in tree_rss_mb(server.proc.pid)]
            if "webp" in wanted:
                results["webp"] = webp_attack(server.url, server.proc.pid)
            if "unread" in wanted:
                results["unread"] = unread_attack(server.url, server.proc.pid)
            if "slow" in wanted:
                results["slow"] = slow_attack(server.url)
            results["tracebacks_in_log"] = server.log_text().count("Traceback")
            results["warnings"] = [ln for ln in server.log_text().splitlines() if "WARNING" in ln][-12:]
        finally:
            server.stop()
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
