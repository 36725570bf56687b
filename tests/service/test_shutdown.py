"""Graceful shutdown: SIGTERM flips /readyz to 503 at once, the server keeps serving for
its drain period, in-flight requests finish, and the process exits with status 0. A
second SIGTERM skips the rest of the drain period."""

from __future__ import annotations

import signal
import threading
import time

import httpx
from servicekit import colour_image, launch, wait_ready


def in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith("captioner_http_requests_in_flight "))
    return float(line.split()[1]) - 1  # minus this scrape


def test_sigterm_drains_then_exits_cleanly(drainer):
    url = drainer.url
    results: dict[str, httpx.Response] = {}
    colours = ["red", "green", "blue", "yellow"] * 4
    files = [("file", (f"{c}{i}.png", colour_image(c, 40 + i))) for i, c in enumerate(colours)]

    def long_request() -> None:  # sixteen images, one per batch on this server: it takes a while
        results["in_flight"] = httpx.post(url + "/v1/captions", files=files, timeout=60)

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 10
    while in_flight(url) < 1 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.01)
    # Sixteen images at one per batch: the request is still being served when the signal comes.
    assert in_flight(url) >= 1 and worker.is_alive() and "in_flight" not in results

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
    assert [it["caption"] for it in r.json()["results"]] == [f"a {c} picture" for c in colours]

    assert drainer.proc.wait(60) == 0, drainer.log_text()
    assert "draining" in drainer.log_text()


def test_a_second_sigterm_skips_the_drain_period(checkpoint, tmp_path):
    """With a drain period of 600 s, the first SIGTERM starts draining (readyz 503) and a
    second one ends it: the process exits 0 long before the period is over (the test
    allows 60 s, a tenth of it, so a slow machine cannot fail it)."""
    log = tmp_path / "drain600.log"
    server = wait_ready(launch(checkpoint, log, "--drain-seconds", "600"), log)
    try:
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        ready = httpx.get(server.url + "/readyz", timeout=10)
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
            ready = httpx.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert server.proc.poll() is None  # still draining: the first signal alone does not end it
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.log_text()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
    assert "draining" in server.log_text()
