"""One client must not take the server from the others: decode cost, unread responses, slow bodies.

The three holes of the third attack run, each reproduced small on loopback against a real
``captioner serve`` with small limits (the figures at full size are in docs/reliability.md,
measured by bench/client_shares.py):

1. lossless WebP images that are tiny files but megapixels to decode: a request over
   ``max_request_pixels`` is refused from the headers (413), one address's requests over
   ``max_client_pixels`` get 429 while another address is served;
2. connections that ask for a large file and never read it: dropped after
   ``write_timeout_s``, and health probes are answered even when the connection cap is
   reached;
3. bodies declared and never sent (or sent at 1 byte per 0.5 s): one address holds at
   most ``max_client_buffered_bytes``, and a body below ``min_upload_bytes_per_s`` is cut
   with 408 after its grace (``header_timeout_s``).

Other clients come from 127.0.0.2 (loopback has every 127/8 address). Nothing asserts a
duration: where a test waits, the bound (``WAIT_S``) is far above what the server needs.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from relkit import API_KEY, MAX_BODY_BYTES, WAIT_S, Server, connect, json_reply, read_head, read_reply, server_with

HEADER_TIMEOUT_S = 2.0  # also the grace of a slow body
WRITE_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 40
MAX_BUFFERED_BYTES = 4 * MAX_BODY_BYTES
MAX_CLIENT_BUFFERED_BYTES = 2 * MAX_BODY_BYTES
MAX_REQUEST_PIXELS = 20_000_000  # relkit's max_pixels is 16 Mpx: one full-size image per request
MAX_CLIENT_PIXELS = 40_000_000
WEBP_SIDE = 4000  # 16 Mpx of one colour: a 38-byte lossless WebP, ~0.4 s to decode here
BUNDLE = "/docs-assets/swagger-ui-bundle.js"  # 1.5 MB
OTHER = "127.0.0.2"  # another client address


SETTINGS = {  # the server's, on top of relkit's
    "header_timeout_s": HEADER_TIMEOUT_S,
    "write_timeout_s": WRITE_TIMEOUT_S,
    "max_connections": MAX_CONNECTIONS,
    "max_buffered_bytes": MAX_BUFFERED_BYTES,
    "max_client_buffered_bytes": MAX_CLIENT_BUFFERED_BYTES,
    "max_request_pixels": MAX_REQUEST_PIXELS,
    "max_client_pixels": MAX_CLIENT_PIXELS,
}


@pytest.fixture(scope="module")
def shares(rel_checkpoint, tmp_path_factory) -> Iterator[Server]:
    with server_with(rel_checkpoint, tmp_path_factory.mktemp("shares-server"), **SETTINGS) as server:
        yield server


def webp(side: int = WEBP_SIDE) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buf, "WEBP", lossless=True, quality=0, method=0)
    return buf.getvalue()


def photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def client(server: Server, source: str = "127.0.0.1") -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=server.url, timeout=WAIT_S, headers=server.headers, transport=transport)


# ---------------------------------------------------------------------------- 1. decode cost
def test_a_request_over_its_pixel_budget_is_refused_from_the_headers(shares: Server) -> None:
    files = [("file", (f"{i}.webp", webp(), "image/webp")) for i in range(2)]  # 32 Mpx in 76 bytes
    with client(shares) as c:
        r = c.post("/v1/captions", files=files)
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["error"] == "too_many_pixels" and str(MAX_REQUEST_PIXELS) in body["detail"], body
        assert "max_request_pixels" in body["detail"]
        one = c.post("/v1/captions", files=files[:1])  # one such image is within every limit
        assert one.status_code == 200, one.text


def test_one_address_gets_429_past_its_pixel_share_while_another_is_served(shares: Server) -> None:
    """Eight one-image requests of 16 Mpx at once from one address: at most two fit its share
    of 40 Mpx in flight, the others are refused with 429 + Retry-After; a photo from another
    address meanwhile is captioned."""
    data = webp()
    base_kb = shares.rss_kb()

    def heavy(_: int) -> httpx.Response:
        with client(shares) as c:
            return c.post("/v1/captions", files=[("file", ("big.webp", data, "image/webp"))])

    with ThreadPoolExecutor(9) as pool:
        heavies = [pool.submit(heavy, i) for i in range(8)]
        with client(shares, OTHER) as c:
            other = c.post("/v1/captions", files=[("file", ("photo.jpg", photo(), "image/jpeg"))])
        results = [f.result() for f in heavies]
    statuses = sorted(r.status_code for r in results)
    print(f"\n8 heavy requests from one address: {statuses}; the other address: {other.status_code}")
    assert other.status_code == 200, other.text
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 1 and 429 in statuses, statuses
    for r in results:
        if r.status_code == 429:
            assert r.json()["error"] == "client_busy" and "max_client_pixels" in r.json()["detail"]
            assert int(r.headers["retry-after"]) >= 1
    assert (shares.rss_kb() - base_kb) < 256 * 1024  # the pixels are decoded in the worker processes
    with client(shares) as c:  # the share was returned: the same address is served again
        assert c.post("/v1/captions", files=[("file", ("big.webp", data, "image/webp"))]).status_code == 200


# ---------------------------------------------------------------------------- 2. unread responses
def test_connections_that_never_read_are_dropped_and_probes_still_answered(shares: Server) -> None:
    """MAX_CONNECTIONS connections each pipeline eight requests for the 1.5 MB Swagger bundle
    and never read: the server is at its cap, yet /healthz and /readyz are answered on new
    connections (anything else gets 503); every stuck connection is dropped after
    WRITE_TIMEOUT_S, the memory they held is bounded, and the server serves normally after."""
    base_kb = shares.rss_kb()
    request = f"GET {BUNDLE} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 8
    stuck = [connect(shares) for _ in range(MAX_CONNECTIONS)]
    try:
        for s in stuck:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(request)
        probes = []
        for path in ("/healthz", "/readyz", "/v1/model"):
            with connect(shares, OTHER) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode())
                probes.append(json_reply(read_reply(s)))
        peak_kb = shares.rss_kb()
        # The server drops them: each socket ends in a reset or end of file, not in WAIT_S.
        ended = 0
        deadline = time.monotonic() + WAIT_S  # one bound for all of them
        for s in stuck:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while s.recv(1 << 20):
                    pass
                ended += 1
            except ConnectionResetError:
                ended += 1
            except TimeoutError:
                pass
    finally:
        for s in stuck:
            s.close()
    print(f"\n{MAX_CONNECTIONS} unread connections: RSS +{(peak_kb - base_kb) / 1024:.0f} MiB; {ended} dropped")
    (health, _, hbody), (ready, _, rbody), (other, oheaders, obody) = probes
    assert (health, hbody["status"]) == (200, "ok") and (ready, rbody["status"]) == (200, "ready")
    assert other == 503 and obody["error"] == "too_many_connections" and oheaders["retry-after"] == "1"
    assert ended == MAX_CONNECTIONS
    assert (peak_kb - base_kb) < 128 * 1024, f"+{(peak_kb - base_kb) / 1024:.0f} MiB"
    with client(shares) as c:
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/captions", files=[("file", ("photo.jpg", photo(), "image/jpeg"))]).status_code == 200
    log = shares.log_text()
    assert f"read none of their response for {WRITE_TIMEOUT_S:g} s (write_timeout_s)" in log
    assert "Traceback" not in log, log[-3000:]


# ---------------------------------------------------------------------------- 3. slow bodies
def upload_head(length: int | None, expect: bool = True) -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: image/jpeg\r\n{size}" + ("Expect: 100-continue\r\n" if expect else "") + "\r\n"
    ).encode()


def test_declared_bodies_hold_one_share_and_are_cut_when_they_do_not_come(shares: Server) -> None:
    """Three connections from one address declare a full-size body and send nothing: two fit
    its share and are admitted, the third gets 429 at once; a client at another address
    uploads meanwhile; the two silent ones are cut with 408 body_too_slow after the grace."""
    silent = [connect(shares, OTHER) for _ in range(3)]
    try:
        firsts = []
        for s in silent:
            s.sendall(upload_head(MAX_BODY_BYTES))
            firsts.append(read_head(s))
        admitted = [s for s, first in zip(silent, firsts) if first.startswith(b"HTTP/1.1 100")]
        refused = [json_reply(first + read_reply(s)) for s, first in zip(silent, firsts) if s not in admitted]
        with client(shares) as c:
            r = c.post("/v1/captions", files=[("file", ("photo.jpg", photo(), "image/jpeg"))])
        cut = [json_reply(read_reply(s).removeprefix(b"\r\n")) for s in admitted]
    finally:
        for s in silent:
            s.close()
    assert len(admitted) == MAX_CLIENT_BUFFERED_BYTES // MAX_BODY_BYTES, firsts
    ((status, headers, body),) = refused
    assert (status, body["error"]) == (429, "client_busy") and "max_client_buffered_bytes" in body["detail"]
    assert int(headers["retry-after"]) >= 1
    assert r.status_code == 200, r.text
    for status, headers, body in cut:
        assert (status, body["error"], headers.get("connection")) == (408, "body_too_slow", "close"), body


def test_a_trickled_chunked_body_is_cut_below_the_minimum_rate(shares: Server) -> None:
    stop = threading.Event()
    with connect(shares) as s:
        s.sendall(upload_head(None, expect=False))

        def trickle() -> None:
            while not stop.wait(0.5):
                with contextlib.suppress(OSError):
                    s.sendall(b"1\r\nx\r\n")  # one byte per chunk, two a second

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            status, headers, body = json_reply(read_reply(s))
        finally:
            stop.set()
            t.join(5)
    assert (status, body["error"], headers.get("connection")) == (408, "body_too_slow", "close"), body
    assert "bytes/s" in body["detail"]


# ---------------------------------------------------------------------------- smaller points
def test_probe_paths_allow_get_and_head_and_a_tiny_timeout_is_422(shares: Server) -> None:
    with client(shares) as c:
        for path in ("/healthz", "/readyz", "/metrics"):
            r = c.post(path)
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", (path, r.headers)
            assert r.json()["error"] == "method_not_allowed"
        r = c.post("/v1/captions?timeout=5e-324", files=[("file", ("photo.jpg", photo(), "image/jpeg"))])
        assert r.status_code == 422 and r.json()["error"] == "invalid_option", r.text
        assert "timeout must be a number from 0.5 to 30" in r.json()["detail"]
        doc = c.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["apiKey"]["description"],
    }
    form = doc["paths"]["/v1/captions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"required": ["file"]} in form["anyOf"] and form["properties"]["file"]["maxItems"] == 4
