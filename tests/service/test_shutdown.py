"""Graceful shutdown: SIGTERM flips /readyz to 503 at once, the server keeps serving for
its drain period, in-flight requests finish, and the process exits with status 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx
from servicekit import colour_image


def in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith("captioner_http_requests_in_flight "))
    return float(line.split()[1]) - 1  # minus this scrape


def test_sigterm_drains_then_exits_cleanly(drainer):
    url = drainer.url
    results: dict[str, httpx.Response] = {}
    files = [("file", (f"{c}.png", colour_image(c, 40 + i))) for i, c in enumerate(["red", "green", "blue", "yellow"])]

    def long_request() -> None:  # four images, one per batch on this server: it takes a while
        results["in_flight"] = httpx.post(url + "/v1/captions", files=files, timeout=60)

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 10
    while in_flight(url) < 1 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.01)

    drainer.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2
    ready = httpx.get(url + "/readyz", timeout=10)
    while ready.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
        ready = httpx.get(url + "/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    assert ready.json()["error"] == "not_ready" and "shutting down" in ready.json()["detail"]
    assert ready.headers["retry-after"] == "1"

    # still serving during the drain period (a load balancer may not have noticed yet)
    late = httpx.post(url + "/v1/captions", files={"file": ("late.png", colour_image("green", 99))}, timeout=60)
    assert late.status_code == 200 and late.json()["results"][0]["caption"] == "a green picture", late.text

    worker.join(60)
    r = results["in_flight"]
    assert r.status_code == 200, r.text
    assert [it["caption"] for it in r.json()["results"]] == [
        f"a {c} picture" for c in ["red", "green", "blue", "yellow"]
    ]

    assert drainer.proc.wait(60) == 0, drainer.log_text()
    assert "draining" in drainer.log_text()
