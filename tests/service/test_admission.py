"""The admission gate in front of uploads (service.admission), driven as plain ASGI with a
stand-in for the service's counters: what matters is whether the body is read at all."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from starlette.datastructures import Headers

from captioner.service.admission import AdmissionMiddleware, body_reservation
from captioner.service.errors import APIError

MAX_BODY = 1000


class Counters:
    """reserve_body/release_body like CaptionService's: a queue flag and a byte budget."""

    def __init__(self, queue_full: bool = False, budget: int = 10_000) -> None:
        self.queue_full = queue_full
        self.budget = budget
        self.buffered = 0
        self.seen_buffered: list[int] = []  # bytes reserved while the app ran
        self.settings = SimpleNamespace(max_body_bytes=MAX_BODY)

    def reserve_body(self, n: int) -> None:
        if self.queue_full:
            raise APIError(503, "queue_full", "full", {"Retry-After": "2"})
        if self.buffered + n > self.budget:
            raise APIError(503, "busy", "no room", {"Retry-After": "1"})
        self.buffered += n

    def release_body(self, n: int) -> None:
        self.buffered -= n


def call(
    service: Counters,
    headers: dict[str, str],
    path: str = "/v1/captions",
    fail: bool = False,
    limits: object = None,
    client: str = "10.0.0.1",
    method: str = "POST",
    receive_from: object = None,
) -> tuple[list[dict], int, int]:
    """Run one request through the gate; returns (messages sent, receive() calls, app calls).
    ``fail``: the app raises after reading the body (a bug, or a client gone mid-request)."""
    app_calls = 0
    received = 0
    seen_buffered: list[int] = []

    async def inner(scope, receive, send) -> None:
        nonlocal app_calls
        app_calls += 1
        seen_buffered.append(service.buffered)
        await receive()
        if fail:
            raise RuntimeError("the app failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict:
        nonlocal received
        received += 1
        if receive_from is not None:
            return await receive_from()  # type: ignore[operator]
        return {"type": "http.request", "body": b"x", "more_body": False}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": (client, 5000),
        "app": SimpleNamespace(state=SimpleNamespace(service=service, client_limits=limits)),
    }
    try:
        asyncio.run(AdmissionMiddleware(inner)(scope, receive, send))
    finally:
        service.seen_buffered = seen_buffered
    return sent, received, app_calls


def status_and_body(sent: list[dict]) -> tuple[int, dict[bytes, bytes], dict]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body)


def test_a_full_queue_refuses_before_the_body_is_read() -> None:
    service = Counters(queue_full=True)
    sent, received, app_calls = call(service, {"content-length": "500", "content-type": "image/jpeg"})
    status, headers, body = status_and_body(sent)
    assert (status, body["error"], headers[b"retry-after"]) == (503, "queue_full", b"2")
    assert received == 0 and app_calls == 0  # not a byte of the body was asked for
    assert b"connection" not in headers  # the parser reads past the body; the client sees the answer


def test_the_byte_budget_is_shared_and_returned() -> None:
    service = Counters(budget=800)
    sent, received, app_calls = call(service, {"content-length": "500"})
    assert app_calls == 1 and received == 1 and status_and_body(sent)[0] == 200
    assert service.seen_buffered == [500]  # reserved while the app read and answered
    assert service.buffered == 0  # returned when the request ended
    service.buffered = 400  # another request holds 400 bytes
    sent, received, app_calls = call(service, {"content-length": "500", "expect": "100-continue"})
    status, headers, body = status_and_body(sent)
    assert (status, body["error"], app_calls, received) == (503, "busy", 0, 0)
    assert headers[b"connection"] == b"close"  # that client never sends its body
    assert service.buffered == 400


def test_a_chunked_body_reserves_the_most_a_body_may_be() -> None:
    service = Counters(budget=MAX_BODY + 10)
    service.buffered = 11
    sent, received, app_calls = call(service, {"transfer-encoding": "chunked"})
    status, headers, body = status_and_body(sent)
    assert (status, body["error"], headers[b"retry-after"], app_calls, received) == (503, "busy", b"1", 0, 0)
    assert service.buffered == 11  # nothing reserved for the refused body
    service.buffered = 10  # exactly max_body_bytes left: a chunked body is admitted
    sent, _, app_calls = call(service, {"transfer-encoding": "chunked"})
    assert (status_and_body(sent)[0], app_calls, service.buffered) == (200, 1, 10)


def test_other_paths_and_unreadable_lengths_pass_untouched() -> None:
    service = Counters(queue_full=True)
    assert call(service, {"content-length": "5"}, path="/healthz")[2] == 1
    for value in ("abc", "-1", "5000"):  # the upload reader answers these 400/413 without reading
        assert body_reservation(Headers({"content-length": value}), MAX_BODY) is None
        assert call(service, {"content-length": value})[2] == 1
    assert body_reservation(Headers({"content-length": "0"}), MAX_BODY) == 0
    assert body_reservation(Headers({}), MAX_BODY) == 0  # no body at all
    assert body_reservation(Headers({"transfer-encoding": "gzip, chunked"}), MAX_BODY) == MAX_BODY
    assert call(service, {"content-length": "5"}, method="GET")[2] == 1  # only POSTs are gated


def test_the_reservation_is_returned_when_the_app_raises() -> None:
    """A raising app must not keep its bytes: otherwise each failure shrinks the budget until
    every upload is refused 503 busy."""
    service = Counters(budget=800)
    for _ in range(3):  # more reservations than the budget holds at once
        with pytest.raises(RuntimeError, match="the app failed"):
            call(service, {"content-length": "500"}, fail=True)
        assert service.seen_buffered == [500] and service.buffered == 0
    assert status_and_body(call(service, {"content-length": "500"})[0])[0] == 200


def test_a_refusal_before_routing_is_counted_under_its_route() -> None:
    """A queue_full answered by the gate (before the router ran) is labelled /v1/captions in
    the metrics, not <unmatched>."""
    from captioner.service.app import ObservabilityMiddleware
    from captioner.service.metrics import Metrics

    metrics = Metrics()
    service = Counters(queue_full=True)

    async def never(scope, receive, send) -> None:
        raise AssertionError("the gate must answer first")

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/captions",
        "root_path": "",
        "headers": [(b"content-length", b"5")],
        "app": SimpleNamespace(state=SimpleNamespace(service=service)),
    }
    stack = ObservabilityMiddleware(AdmissionMiddleware(never), metrics, routes=[])
    asyncio.run(stack(scope, receive, send))
    assert metrics.requests.labels("/v1/captions", "POST", "503")._value.get() == 1
    assert metrics.requests.labels("<unmatched>", "POST", "503")._value.get() == 0


def test_a_body_below_the_minimum_rate_is_cut_with_408_and_a_fast_one_passes() -> None:
    """min_rate_receive: a body that stops arriving is cut once it is behind its grace plus
    received / rate; one that keeps up passes through untouched, and so does whatever
    follows its last chunk."""
    from captioner.service.admission import min_rate_receive

    async def stalls() -> dict:
        await asyncio.sleep(3600)  # a client that sends nothing more
        raise AssertionError("unreachable")

    async def cut() -> APIError:
        paced = min_rate_receive(stalls, rate=1000, grace_s=0.05)
        with pytest.raises(APIError) as refused:
            await paced()
        return refused.value

    e = asyncio.run(asyncio.wait_for(cut(), 30))  # a hang guard, not a timing assertion
    assert (e.status, e.code, e.headers) == (408, "body_too_slow", {"Connection": "close"})
    assert "slower than 1000 bytes/s (0 bytes in" in e.detail

    chunks = [
        {"type": "http.request", "body": b"x" * 500, "more_body": True},
        {"type": "http.request", "body": b"y" * 500, "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def fast() -> dict:
        return chunks.pop(0)

    async def read_all() -> list[dict]:
        paced = min_rate_receive(fast, rate=1, grace_s=3600)
        return [await paced() for _ in range(3)]

    got = asyncio.run(read_all())
    assert [m["type"] for m in got] == ["http.request", "http.request", "http.disconnect"]
    assert b"".join(m.get("body", b"") for m in got) == b"x" * 500 + b"y" * 500


def test_one_client_holds_at_most_its_share_of_the_budget() -> None:
    from captioner.service.client_limits import ClientLimits

    service = Counters(budget=10_000)
    limits = ClientLimits(max_client_pixels=1, max_client_buffered_bytes=800)
    sent, received, app_calls = call(service, {"content-length": "500"}, limits=limits)
    assert (status_and_body(sent)[0], app_calls) == (200, 1)
    assert limits.body_bytes.held("10.0.0.1") == 0 and service.buffered == 0  # both returned
    limits.body_bytes.take("10.0.0.1", 400)  # this client has another upload in flight
    sent, received, app_calls = call(service, {"content-length": "500"}, limits=limits)
    status, headers, body = status_and_body(sent)
    assert (status, body["error"], headers[b"retry-after"], app_calls, received) == (429, "client_busy", b"1", 0, 0)
    assert "max_client_buffered_bytes" in body["detail"] and service.buffered == 0
    sent, _, app_calls = call(service, {"content-length": "500"}, limits=limits, client="10.0.0.2")
    assert (status_and_body(sent)[0], app_calls) == (200, 1)  # another client is served
    service.queue_full = True  # the shared budget refuses: the client's share is given back
    sent, _, _ = call(service, {"content-length": "300"}, limits=limits)
    assert status_and_body(sent)[2]["error"] == "queue_full" and limits.body_bytes.held("10.0.0.1") == 400


def test_the_gate_paces_an_admitted_body_and_returns_its_reservation() -> None:
    """With min_upload_bytes_per_s set, the app's receive() is the paced one: a body that
    stalls after 1000 bytes at 2000 bytes/s is cut with 408 once it is behind, the error
    counts every byte received, and the reservation comes back."""
    service = Counters(budget=10_000)
    service.settings = SimpleNamespace(max_body_bytes=MAX_BODY, min_upload_bytes_per_s=2000, header_timeout_s=0.05)
    chunks = [b"x" * 500, b"y" * 500]

    async def trickle() -> dict:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": True}
        await asyncio.sleep(3600)  # then nothing more
        raise AssertionError("unreachable")

    async def app_reads_all(scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/captions",
        "headers": [(b"content-length", b"1000")],
        "app": SimpleNamespace(state=SimpleNamespace(service=service)),
    }
    seen: list[int] = []

    async def run() -> None:
        async def inner(scope, receive, send) -> None:
            seen.append(service.buffered)
            await app_reads_all(scope, receive, send)

        async def send(message: dict) -> None:
            pass

        await AdmissionMiddleware(inner)(scope, trickle, send)

    with pytest.raises(APIError) as refused:
        asyncio.run(asyncio.wait_for(run(), 10))  # a hang guard: the cut comes after about 0.55 s
    e = refused.value
    assert (e.status, e.code) == (408, "body_too_slow")
    assert "slower than 2000 bytes/s (1000 bytes in" in e.detail
    assert seen == [1000] and service.buffered == 0
