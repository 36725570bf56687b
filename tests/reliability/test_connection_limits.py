"""Attacks below the API: request heads without end, slowloris, too many connections,
uploads that would all be buffered at once, invalid Content-Length, clients that vanish.

All on loopback, each bounded in bytes and time (it stops by itself). Where time appears
it is a generous bound (the server acts after ``HEADER_TIMEOUT_S`` = 2 s; the tests allow
30 s) so a loaded machine cannot fail them, while a server without the limit fails them
for certain (it never acts at all).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from relkit import (
    API_KEY,
    MAX_BODY_BYTES,
    QUEUE_SIZE,
    WAIT_S,
    Server,
    connect,
    json_reply,
    read_head,
    read_reply,
    server_with,
)

HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 60
MAX_BUFFERED_BYTES = 4 * MAX_BODY_BYTES  # room for four full-size bodies
FLOOD_LIMIT_BYTES = 200 * 1024 * 1024  # the most any flood below sends


SETTINGS = {
    "header_timeout_s": HEADER_TIMEOUT_S,
    "max_connections": MAX_CONNECTIONS,
    "max_buffered_bytes": MAX_BUFFERED_BYTES,
}


@pytest.fixture(scope="module")
def guarded(rel_checkpoint, tmp_path_factory) -> Iterator[Server]:
    """A server with small connection limits (the others are relkit's)."""
    with server_with(rel_checkpoint, tmp_path_factory.mktemp("guarded-server"), **SETTINGS) as server:
        yield server


def read_response(s: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), whether or not the server closes."""
    data = read_head(s)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def flood(server: Server, start: bytes, chunk: bytes) -> tuple[int, int]:
    """Send ``start`` then ``chunk`` again and again until the server closes the connection or
    FLOOD_LIMIT_BYTES are sent. Returns (bytes sent, peak growth of the server's RSS in KiB)."""
    base = server.rss_kb()
    peak = base
    sent = 0
    with connect(server) as s:
        s.settimeout(WAIT_S)
        try:
            s.sendall(start)
            while sent < FLOOD_LIMIT_BYTES:
                s.sendall(chunk)
                sent += len(chunk)
                if sent % (4 * 1024 * 1024) < len(chunk):
                    peak = max(peak, server.rss_kb())
        except OSError:  # the server closed the connection: what a bounded server does
            pass
    peak = max(peak, server.rss_kb())
    return sent, peak - base


@pytest.mark.parametrize("shape", ["one endless header line", "many 64 KB header lines"])
def test_an_endless_request_head_does_not_grow_the_server(rel_server: Server, shape: str) -> None:
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    if shape == "one endless header line":
        start += b"X-Flood: "
        chunk = b"a" * 65536
    else:
        chunk = b"X-Flood: " + b"a" * (65536 - 11) + b"\r\n"
    sent, growth_kb = flood(rel_server, start, chunk)
    print(f"\n{shape}: {sent / 2**20:.1f} MiB sent before the server closed; RSS +{growth_kb / 1024:.1f} MiB")
    # The server stops reading at its 64 KiB head limit; what is sent after that fills the
    # kernel's socket buffers (a few MiB on loopback) until the reset arrives.
    assert sent < 32 * 2**20, f"the server kept reading a {sent / 2**20:.0f} MiB request head"
    assert growth_kb < 32 * 1024, f"the server grew by {growth_kb / 1024:.0f} MiB while reading one request head"
    assert rel_server.alive()
    with rel_server.client() as client:
        assert client.get("/healthz").status_code == 200


def test_a_request_head_over_the_limit_gets_431_json(rel_server: Server) -> None:
    with connect(rel_server) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        status, headers, body = json_reply(read_reply(s))
    assert status == 431 and body["error"] == "headers_too_large", body
    assert "65536 bytes" in body["detail"] and headers["connection"] == "close"
    assert "refused 1 request(s) whose request line and headers exceed 65536 bytes" in rel_server.log_text()


@pytest.mark.parametrize(
    "value", ["abc", "-1", "1_0", "\u0663", "5, 5", "99999999999999999999999"], ids=lambda v: ascii(v)
)
def test_invalid_content_length_gets_a_4xx_json_reply(rel_server: Server, value: str) -> None:
    head = (
        f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {value}\r\n\r\n"
    )
    with connect(rel_server) as s:
        s.sendall(head.encode("utf-8") + b"\xff\xd8")
        reply = read_response(s)
    status, _, body = json_reply(reply)
    assert status in (400, 413), reply[:300]
    assert body["error"] in ("bad_request", "body_too_large") and body["detail"], body
    with rel_server.client() as client:
        assert client.get("/healthz").status_code == 200


def test_clients_that_vanish_cost_nothing(rel_server: Server) -> None:
    """Connections closed in the middle of a body, right after sending a whole request, and
    while the request is being captioned: the server logs no error and its queue comes back
    empty (a full-size request is accepted at once afterwards)."""
    from hostile import encode, picture

    img = encode(picture(64, 48, seed=3), "JPEG", quality=85)
    head = (
        f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(img)}\r\n\r\n"
    ).encode()
    log_before = len(rel_server.log_text())
    for cut in (len(head) + len(img) // 2, len(head) + len(img)):
        for _ in range(3 * QUEUE_SIZE):  # more than the queue holds: a leak would fill it
            with connect(rel_server) as s:
                s.sendall((head + img)[:cut])
    time.sleep(0.5)  # let the server notice the closed connections (nothing asserted on time)
    with rel_server.client() as client:
        files = [("file", (f"{i}.jpg", img, "image/jpeg")) for i in range(4)]
        deadline = time.monotonic() + WAIT_S
        r = client.post("/v1/captions", files=files)
        while r.status_code == 503 and time.monotonic() < deadline:  # the vanished ones may still be running
            time.sleep(0.2)
            r = client.post("/v1/captions", files=files)
        assert r.status_code == 200, r.text
        assert client.get("/healthz").status_code == 200
    log = rel_server.log_text()[log_before:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def test_slowloris_connections_are_cut_and_extra_ones_refused(guarded: Server) -> None:
    """MAX_CONNECTIONS connections trickle a request head (one header line every 0.5 s, so
    they never go quiet); the next connections are refused with 503 JSON as soon as their
    request is not a health probe, while a probe is answered; every trickling one is closed
    with 408 after HEADER_TIMEOUT_S; then the server serves again."""
    slow = [connect(guarded) for _ in range(MAX_CONNECTIONS - 1)]
    idle = connect(guarded)  # sends nothing at all
    opened = time.monotonic()
    for s in slow:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for s in slow:
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n")
            stop.wait(0.5)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        # Connections beyond the cap: a 503 with Retry-After, then closed; a probe is answered.
        extra = []
        for _ in range(5):
            with connect(guarded) as s:
                s.sendall(b"GET /v1/model HTTP/1.1\r\nHost: x\r\n\r\n")
                extra.append(json_reply(read_reply(s)))
        for status, headers, body in extra:
            assert status == 503 and body["error"] == "too_many_connections", body
            assert headers["retry-after"] == "1" and str(MAX_CONNECTIONS) in body["detail"]
        with connect(guarded) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            probe = read_reply(s)
        assert probe.startswith(b"HTTP/1.1 200") and b"connection: close" in probe, probe
        # The trickling connections: 408 JSON, then closed by the server.
        replies = [read_reply(s) for s in slow]
        cut_after = time.monotonic() - opened
        assert read_reply(idle) == b""  # an idle connection is just closed
    finally:
        stop.set()
        t.join(5)
        for s in [*slow, idle]:
            s.close()
    print(f"\nslowloris: {len(slow)} trickling connections cut after {cut_after:.1f} s; 5 extra refused with 503")
    for reply in replies:
        status, _, body = json_reply(reply)
        assert status == 408 and body["error"] == "header_timeout", body
    assert cut_after < WAIT_S
    with guarded.client() as client:
        assert client.get("/healthz").status_code == 200
    log = guarded.log_text()
    assert "beyond the limit of 60 open connections (max_connections)" in log
    assert "did not arrive within 2 s (header_timeout_s)" in log


def test_uploads_beyond_the_buffer_budget_are_refused_before_their_body(guarded: Server) -> None:
    """40 clients announce a full-size body with ``Expect: 100-continue`` and hold it unsent
    until all have their answer: only MAX_BUFFERED_BYTES worth get ``100 Continue``, the
    others a 503 + Retry-After before sending anything, and the server's memory grows by at
    most about the budget while the admitted bodies sit in it."""
    body = b"\xff" * MAX_BODY_BYTES  # not an image: refused after reading, quickly
    head = (
        f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    base_kb = guarded.rss_kb()
    conns = [connect(guarded) for _ in range(40)]
    admitted, refused = [], []
    try:
        for s in conns:
            s.sendall(head)
            first = read_head(s)
            if first.startswith(b"HTTP/1.1 100"):
                s.sendall(body[:-1])  # all but the last byte: the server holds it, waiting
                admitted.append(s)
            else:
                refused.append(json_reply(first + read_reply(s)))  # closed after the 503
        time.sleep(0.5)  # let the server read what was sent (nothing asserted on time)
        growth_mb = (guarded.rss_kb() - base_kb) / 1024
        for s in admitted:
            s.sendall(body[-1:])
        answers = [json_reply(read_response(s))[0] for s in admitted]
    finally:
        for s in conns:
            s.close()
    print(f"\n40 full-size uploads: {len(admitted)} admitted, {len(refused)} refused; RSS +{growth_mb:.0f} MiB")
    assert len(admitted) == MAX_BUFFERED_BYTES // MAX_BODY_BYTES, (len(admitted), refused[:1])
    for status, headers, err in refused:
        assert status == 503 and err["error"] == "busy", err
        assert 1 <= int(headers["retry-after"]) <= 60
    assert all(400 <= s < 500 for s in answers), answers  # the admitted bodies were read and judged
    # Without the budget all 40 bodies (160 MiB) would sit in memory at once.
    assert growth_mb < MAX_BUFFERED_BYTES * 3 / 2**20, f"+{growth_mb:.0f} MiB"


def test_slowloris_after_a_good_request_is_cut_too(guarded: Server) -> None:
    """The head timer starts again when a kept-alive connection's response ends: a client
    that makes one good request and then trickles the next head is cut with 408 like any
    other (without the re-armed timer it would hold the connection for as long as it likes)."""
    with connect(guarded) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = read_response(s)
        assert first.startswith(b"HTTP/1.1 200"), first
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.5):
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n")

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            reply = read_reply(s)
        finally:
            stop.set()
            t.join(5)
    status, _, body = json_reply(reply)
    assert status == 408 and body["error"] == "header_timeout", body


def test_many_small_pipelined_requests_are_all_answered(rel_server: Server) -> None:
    """8,000 pipelined GET /healthz (272 KB in one go): each head is small, so none may be
    refused as too large, however many of them one read of the socket holds."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    n = 8000
    with connect(rel_server) as s:
        sender = threading.Thread(target=s.sendall, args=(request * n,), daemon=True)
        sender.start()
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while data.count(b"HTTP/1.1 ") < n and (chunk := s.recv(1 << 20)):
                data += chunk
        sender.join(WAIT_S)
    assert data.count(b"HTTP/1.1 200") == n, (data.count(b"HTTP/1.1 200"), data.count(b"431"))
