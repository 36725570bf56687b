"""A closed-loop load generator: N concurrent clients POST images for T seconds.

Each client sends one small image per request, waits for the answer, and sends the next
at once (``retry_after=False``: the worst case, clients that ignore Retry-After) or after
sleeping what Retry-After asked, capped at 1 s. Used by bench/overload.py (256 clients,
30 s) and tests/reliability/test_overload.py (64 clients, 5 s).

What is recorded: every status code, whether each 503 carried a Retry-After header, the
latency of each answer, client-side failures (timeouts, refused or reset connections),
and the server's resident memory sampled every 0.25 s.
"""

from __future__ import annotations

import asyncio
import collections
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from hostile import encode, picture


def payloads(n: int = 8) -> list[bytes]:
    """A few small different JPEGs (64x48), so the server cannot cache anything."""
    return [encode(picture(64, 48, seed=i), "JPEG", quality=85) for i in range(n)]


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))


@dataclass
class LoadResult:
    clients: int
    seconds: float
    statuses: collections.Counter = field(default_factory=collections.Counter)
    missing_retry_after: int = 0  # 503s without a Retry-After header
    retry_after_values: collections.Counter = field(default_factory=collections.Counter)
    client_errors: collections.Counter = field(default_factory=collections.Counter)  # exception type -> count
    latencies_ok: list[float] = field(default_factory=list)
    latencies_503: list[float] = field(default_factory=list)
    rss_samples_kb: list[int] = field(default_factory=list)
    bad_bodies: int = 0  # a 200 without a caption, or an error without {"error", "detail"}

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def summary(self) -> dict:
        def pct(xs: list[float], q: float) -> float | None:
            return round(statistics.quantiles(xs, n=100)[int(q) - 1] * 1000, 1) if len(xs) >= 2 else None

        return {
            "clients": self.clients,
            "seconds": self.seconds,
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.seconds, 1),
            "statuses": dict(sorted(self.statuses.items())),
            "captions_per_s": round(self.statuses[200] / self.seconds, 1),
            "503_without_retry_after": self.missing_retry_after,
            "retry_after_values": dict(sorted(self.retry_after_values.items())),
            "client_errors": dict(self.client_errors),
            "bad_bodies": self.bad_bodies,
            "latency_ms_200": {"p50": pct(self.latencies_ok, 50), "p99": pct(self.latencies_ok, 99)},
            "latency_ms_503": {"p50": pct(self.latencies_503, 50), "p99": pct(self.latencies_503, 99)},
            "rss_mib_peak": round(max(self.rss_samples_kb) / 1024, 1) if self.rss_samples_kb else None,
        }


async def _client(
    http: httpx.AsyncClient, images: list[bytes], k: int, until: float, res: LoadResult, retry_after: bool
) -> None:
    i = k
    while time.monotonic() < until:
        data = images[i % len(images)]
        i += 1
        start = time.monotonic()
        try:
            r = await http.post("/v1/captions", files={"file": (f"c{k}.jpg", data, "image/jpeg")})
        except httpx.HTTPError as e:
            res.client_errors[type(e).__name__] += 1
            await asyncio.sleep(0.05)
            continue
        took = time.monotonic() - start
        res.statuses[r.status_code] += 1
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code == 200:
            res.latencies_ok.append(took)
            if not (body and isinstance(body["results"][0].get("caption"), str)):
                res.bad_bodies += 1
        else:
            if not (isinstance(body, dict) and "error" in body and "detail" in body):
                res.bad_bodies += 1
        if r.status_code == 503:
            res.latencies_503.append(took)
            value = r.headers.get("retry-after")
            if value is None:
                res.missing_retry_after += 1
            else:
                res.retry_after_values[value] += 1
                if retry_after:
                    await asyncio.sleep(min(float(value), 1.0))


async def _sample_rss(pid: int | None, until: float, res: LoadResult) -> None:
    while pid is not None and time.monotonic() < until:
        try:
            res.rss_samples_kb.append(rss_kb(pid))
        except (OSError, AttributeError):
            return
        await asyncio.sleep(0.25)


async def _hammer(
    url: str, headers: dict, clients: int, seconds: float, pid: int | None, retry_after: bool, timeout: float
) -> LoadResult:
    res = LoadResult(clients, seconds)
    images = payloads()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as http:
        until = time.monotonic() + seconds
        await asyncio.gather(
            _sample_rss(pid, until, res), *(_client(http, images, k, until, res, retry_after) for k in range(clients))
        )
    return res


def run_load(
    url: str,
    headers: dict,
    *,
    clients: int,
    seconds: float,
    pid: int | None = None,
    retry_after: bool = False,
    timeout: float = 60.0,
) -> LoadResult:
    """Drive ``clients`` concurrent clients against ``url`` for ``seconds``."""
    return asyncio.run(_hammer(url, headers, clients, seconds, pid, retry_after, timeout))


def serves_normally(url: str, headers: dict, n: int = 10) -> tuple[int, float]:
    """(number of 200s out of ``n`` sequential requests, median latency in s)."""
    ok, times = 0, []
    images = payloads(n)
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for data in images:
            start = time.monotonic()
            r = http.post("/v1/captions", files={"file": ("after.jpg", data, "image/jpeg")})
            times.append(time.monotonic() - start)
            ok += r.status_code == 200
    return ok, statistics.median(times)
