"""The admission gate in front of uploads (service.admission), driven as plain ASGI with a
stand-in for the service's counters: what matters is whether the body is read at all."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

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


def call(service: Counters, headers: dict[str, str], path: str = "/v1/captions") -> tuple[list[dict], int, int]:
    """Run one request through the gate; returns (messages sent, receive() calls, app calls)."""
    app_calls = 0
    received = 0
    seen_buffered: list[int] = []

    async def inner(scope, receive, send) -> None:
        nonlocal app_calls
        app_calls += 1
        seen_buffered.append(service.buffered)
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x", "more_body": False}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "app": SimpleNamespace(state=SimpleNamespace(service=service)),
    }
    asyncio.run(AdmissionMiddleware(inner)(scope, receive, send))
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
    sent, _, app_calls = call(service, {"transfer-encoding": "chunked"})
    assert app_calls == 0 and status_and_body(sent)[1:] and status_and_body(sent)[2]["error"] == "busy"


def test_other_paths_and_unreadable_lengths_pass_untouched() -> None:
    service = Counters(queue_full=True)
    assert call(service, {"content-length": "5"}, path="/healthz")[2] == 1
    for value in ("abc", "-1", "5000"):  # the upload reader answers these 400/413 without reading
        assert body_reservation(Headers({"content-length": value}), MAX_BODY) is None
        assert call(service, {"content-length": value})[2] == 1
    assert body_reservation(Headers({"content-length": "0"}), MAX_BODY) == 0
