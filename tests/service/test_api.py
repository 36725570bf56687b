"""The HTTP API against real uvicorn servers on loopback ports (see conftest.py).

Every image the tests send is a plain colour picture, so every caption is known in
advance ("a red picture"): correctness is checked per image, per request.
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servicekit import API_KEY, COLOURS, colour_image

COLOUR_NAMES = list(COLOURS)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    """The response has ``status`` and the JSON error shape with ``code``."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    return body


def assert_caption(r: httpx.Response, colour: str) -> dict:
    assert r.status_code == 200, r.text[:500]
    item = r.json()["results"][0]
    assert item["caption"] == f"a {colour} picture", item
    return item


def good_request(server) -> None:
    """The server still answers a normal request correctly."""
    with server.client(headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        assert_caption(c.post("/v1/captions", files={"file": ("ok.png", colour_image("green", 7))}), "green")


# ---------------------------------------------------------------------------- success paths
def test_multipart_with_several_images_returns_one_result_each(server):
    files = [
        ("file", (f"{name}.png", colour_image(name, 10 + i, fmt="PNG" if i % 2 else "JPEG")))
        for i, name in enumerate(COLOUR_NAMES)
    ]
    with server.client() as c:
        r = c.post("/v1/captions", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == "test-colours"
    assert (body["succeeded"], body["failed"], body["beam_size"], body["max_length"]) == (4, 0, 1, 8)
    assert [it["filename"] for it in body["results"]] == [f"{n}.png" for n in COLOUR_NAMES]
    assert [it["caption"] for it in body["results"]] == [f"a {n} picture" for n in COLOUR_NAMES]
    for it in body["results"]:
        assert it["score"] <= 0 and it["time_ms"] > 0 and 1 <= it["batch_size"] <= 16


def test_raw_image_body_and_options(server):
    with server.client() as c:
        r = c.post(
            "/v1/captions",
            content=colour_image("blue", 3, fmt="JPEG"),
            headers={"Content-Type": "image/jpeg"},
            params={"beam_size": 3, "max_length": 5, "filename": "../../secret/blue\u202e.jpg"},
        )
    item = assert_caption(r, "blue")
    assert item["filename"] == "blue.jpg"  # last path component, control characters removed
    assert (r.json()["beam_size"], r.json()["max_length"]) == (3, 5)


def test_options_as_form_fields(server):
    with server.client() as c:
        r = c.post("/v1/captions", files={"file": ("y.png", colour_image("yellow", 4))}, data={"beam_size": "2"})
    assert_caption(r, "yellow")
    assert r.json()["beam_size"] == 2


def test_32_concurrent_requests_are_batched_and_each_gets_its_own_caption(server):
    jobs = [
        (
            COLOUR_NAMES[i % 4],
            colour_image(COLOUR_NAMES[i % 4], 1000 + i, size=(40 + i, 40), fmt="PNG" if i % 2 else "JPEG"),
        )
        for i in range(32)
    ]

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            return await asyncio.gather(
                *(c.post("/v1/captions", files={"file": (f"{i}.png", data)}) for i, (_, data) in enumerate(jobs))
            )

    responses = asyncio.run(fire())
    for i, ((colour, _), r) in enumerate(zip(jobs, responses)):
        item = assert_caption(r, colour)
        assert item["filename"] == f"{i}.png"
    assert max(r.json()["results"][0]["batch_size"] for r in responses) > 1

    metrics = scrape(server)
    assert metrics["captioner_batch_size_sum"][()] > metrics["captioner_batch_size_count"][()]  # mean batch > 1
    assert metrics["captioner_batch_size_bucket"][(("le", "1.0"),)] < metrics["captioner_batch_size_count"][()]
    key = (("method", "POST"), ("route", "/v1/captions"), ("status", "200"))
    assert metrics["captioner_http_requests_total"][key] >= 32
    assert metrics["captioner_images_captioned_total"][()] >= 32
    assert metrics["captioner_http_request_duration_seconds_count"][(("route", "/v1/captions"),)] >= 32
    assert metrics["captioner_queue_depth"][()] == 0


def scrape(server) -> dict[str, dict[tuple, float]]:
    """/metrics parsed: {sample name: {sorted label items: value}}."""
    with server.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_health_ready_model_and_docs(server):
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready", "model_id": "test-colours"}
        info = c.get("/v1/model").json()
        assert info["encoder"]["name"] == "efficientnet_lite0" and info["vocab_size"] == 10
        assert info["decoder"]["max_length"] == 8 and info["metadata"]["training_data"]
        assert info["service"]["max_files"] == 16 and info["service"]["auth_required"] is False
        assert info["service"]["decode_in"] == "processes"
        # Two lanes: the encoder has both threads when its batch runs alone (one per batch beside another).
        assert (info["service"]["lanes"], info["service"]["threads"]) == (2, 2)
        schema = c.get("/openapi.json").json()
        assert (
            "/v1/captions" in schema["paths"]
            and "multipart/form-data" in schema["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
        )
        docs = c.get("/docs")  # the Swagger UI works offline: its assets are served locally
        assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
        assert "cdn" not in docs.text.lower()
        js = c.get("/docs-assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000


# ---------------------------------------------------------------------------- error cases
def _multipart(*parts):
    return {"files": list(parts)}


TRUNCATED_PNG = colour_image("red", 1, size=(64, 64))[:120]

# name -> (request kwargs, status, code); each is sent to the default server, followed by a good request.
BAD_INPUTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "unknown route": (dict(method="GET", url="/v2/captions"), 404, "not_found"),
    "wrong method": (dict(method="DELETE", url="/v1/captions"), 405, "method_not_allowed"),
    "wrong content type": (
        dict(method="POST", url="/v1/captions", content=b"hello", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    ),
    "no content type": (dict(method="POST", url="/v1/captions", content=b"hello"), 415, "unsupported_media_type"),
    "not an image": (
        dict(method="POST", url="/v1/captions", **_multipart(("file", ("notes.txt", b"just text")))),
        415,
        "unsupported_image",
    ),
    "truncated image": (
        dict(method="POST", url="/v1/captions", **_multipart(("file", ("cut.png", TRUNCATED_PNG)))),
        422,
        "unreadable_image",
    ),
    "empty file": (
        dict(method="POST", url="/v1/captions", **_multipart(("file", ("empty.jpg", b"")))),
        422,
        "empty_image",
    ),
    "empty raw body": (
        dict(method="POST", url="/v1/captions", content=b"", headers={"Content-Type": "image/png"}),
        422,
        "empty_image",
    ),
    "decompression bomb": (
        dict(
            method="POST",
            url="/v1/captions",
            content=png_claiming(100_000, 100_000),
            headers={"Content-Type": "image/png"},
        ),
        413,
        "image_too_large",
    ),
    "too many files": (
        dict(method="POST", url="/v1/captions", **_multipart(*[("file", (f"{i}.png", b"x")) for i in range(17)])),
        413,
        "too_many_files",
    ),
    "no file part": (
        dict(method="POST", url="/v1/captions", data={"beam_size": "2"}, files={"nothing": (None, b"")}),
        422,
        "unknown_field",
    ),
    "only options": (
        dict(
            method="POST",
            url="/v1/captions",
            content=b'--B\r\nContent-Disposition: form-data; name="beam_size"\r\n\r\n2\r\n--B--\r\n',
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        ),
        422,
        "no_image",
    ),
    "multipart without boundary": (
        dict(method="POST", url="/v1/captions", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}),
        400,
        "invalid_multipart",
    ),
    "beam size too large": (
        dict(
            method="POST",
            url="/v1/captions",
            params={"beam_size": 99},
            **_multipart(("file", ("r.png", colour_image("red", 2)))),
        ),
        422,
        "invalid_option",
    ),
    "max length zero": (
        dict(
            method="POST",
            url="/v1/captions",
            params={"max_length": 0},
            **_multipart(("file", ("r.png", colour_image("red", 2)))),
        ),
        422,
        "invalid_option",
    ),
    "beam size not a number": (
        dict(
            method="POST",
            url="/v1/captions",
            params={"beam_size": "wide"},
            **_multipart(("file", ("r.png", colour_image("red", 2)))),
        ),
        422,
        "invalid_request",
    ),
    "form option not a number": (
        dict(
            method="POST",
            url="/v1/captions",
            data={"max_length": "long"},
            **_multipart(("file", ("r.png", colour_image("red", 2)))),
        ),
        422,
        "invalid_option",
    ),
    "timeout below the floor": (  # a request that could only ever end in 504
        dict(
            method="POST",
            url="/v1/captions",
            params={"timeout": 0.001},
            **_multipart(("file", ("r.png", colour_image("red", 2)))),
        ),
        422,
        "invalid_option",
    ),
    "all images fail differently": (
        dict(method="POST", url="/v1/captions", **_multipart(("file", ("a.txt", b"text")), ("file", ("b.png", b"")))),
        422,
        "all_failed",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_documented_status_and_the_server_keeps_serving(server, case):
    kwargs, status, code = BAD_INPUTS[case]
    with server.client() as c:
        body = assert_error(c.request(**kwargs), status, code)
    if code in ("unsupported_image", "unreadable_image", "empty_image", "all_failed"):
        assert body["failed"] == len(body["results"]) and all(it["error"] for it in body["results"])
    good_request(server)


def test_one_bad_image_fails_only_its_own_entry(server):
    with server.client() as c:
        r = c.post(
            "/v1/captions",
            files=[
                ("file", ("red.png", colour_image("red", 5))),
                ("file", ("broken.png", TRUNCATED_PNG)),
                ("file", ("blue.png", colour_image("blue", 6))),
            ],
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["succeeded"], body["failed"]) == (2, 1)
    red, broken, blue = body["results"]
    assert red["caption"] == "a red picture" and blue["caption"] == "a blue picture"
    assert broken["error"] == "unreadable_image" and "broken.png" in broken["detail"] and "caption" not in broken


def test_405_names_the_allowed_method(server):
    with server.client() as c:
        r = c.get("/v1/captions")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_cors_is_off_by_default(server):
    with server.client() as c:
        r = c.get("/healthz", headers={"Origin": "http://allowed.example"})
        assert "access-control-allow-origin" not in r.headers
        pre = c.options(
            "/v1/captions", headers={"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in pre.headers
        assert_error(pre, 405, "method_not_allowed")


def test_security_headers_and_page_policy(server):
    with server.client() as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/static/app.js"' in page.text and "http" not in page.text.split("<body>")[0].replace(
            'name="viewport"', ""
        )  # no CDN in the head
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/v1/model").headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------- the limited server
def test_api_key_is_required_when_configured(limited):
    img = {"file": ("r.png", colour_image("red", 8))}
    with limited.client() as c:
        missing = c.post("/v1/captions", files=img)
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert_error(c.post("/v1/captions", files=img, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert_error(c.post("/v1/captions", files=img, headers={"Authorization": API_KEY}), 401, "unauthorized")
        assert_error(c.get("/v1/model"), 401, "unauthorized")
        assert_caption(c.post("/v1/captions", files=img, headers={"Authorization": f"Bearer {API_KEY}"}), "red")
        # probes, metrics and the page stay open
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200 and c.get("/").status_code == 200
        service = c.get("/v1/model", headers={"Authorization": f"bearer {API_KEY}"}).json()["service"]
        assert service["auth_required"] and service["decode_in"] == "threads"  # and it captioned above


def test_body_limit_is_enforced_while_reading(limited):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    big = b"\xff" * 100_000  # limit is 65536
    with limited.client(headers=auth) as c:
        assert_error(c.post("/v1/captions", content=big, headers={"Content-Type": "image/png"}), 413, "body_too_large")

        def chunks():  # no Content-Length: the limit must trip while streaming
            for _ in range(10):
                yield b"\x00" * 10_000

        r = c.post("/v1/captions", content=chunks(), headers={"Content-Type": "image/png"})
        assert_error(r, 413, "body_too_large")
        assert "content-length" not in {k.lower() for k in r.request.headers}
    good_request(limited)


def test_a_body_trickling_in_too_slowly_gets_408(limited):
    import time

    def trickle():  # 10 bytes every 0.5 s; the limited server allows 1.5 s for a body
        for _ in range(6):
            time.sleep(0.5)
            yield b"\x00" * 10

    with limited.client(headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        r = c.post("/v1/captions", content=trickle(), headers={"Content-Type": "image/png"})
    assert_error(r, 408, "body_timeout")
    good_request(limited)


def test_pixel_limit_and_file_count_on_the_limited_server(limited):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    buf = io.BytesIO()
    Image.new("RGB", (600, 600), (200, 30, 30)).save(buf, "PNG")  # 360k pixels > 250k
    with limited.client(headers=auth) as c:
        assert_error(
            c.post("/v1/captions", content=buf.getvalue(), headers={"Content-Type": "image/png"}),
            413,
            "image_too_large",
        )
        files = [("file", (f"{i}.png", colour_image("red", i))) for i in range(3)]  # max 2
        assert_error(c.post("/v1/captions", files=files), 413, "too_many_files")
    good_request(limited)


def test_cors_allows_only_the_configured_origin(limited):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with limited.client() as c:
        ok = c.options("/v1/captions", headers={"Origin": "http://allowed.example", **pre})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://allowed.example"
        assert_error(c.options("/v1/captions", headers={"Origin": "http://evil.example", **pre}), 400, "cors_rejected")
        r = c.get("/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_full_queue_answers_503_with_retry_after(limited):
    """queue_size 2, one image per batch: a burst of 2-image requests must overflow it."""
    auth = {"Authorization": f"Bearer {API_KEY}"}

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=limited.url, timeout=120, limits=limits, headers=auth) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/v1/captions",
                        files=[
                            ("file", (f"{i}a.png", colour_image("red", i))),
                            ("file", (f"{i}b.png", colour_image("blue", i))),
                        ],
                    )
                    for i in range(16)
                )
            )

    rejected = []
    for _ in range(3):  # a burst overflows on the first try in practice; retry to be immune to odd scheduling
        responses = asyncio.run(burst())
        for r in responses:
            if r.status_code == 503:
                assert_error(r, 503, "queue_full")
                assert int(r.headers["retry-after"]) >= 1
                rejected.append(r)
            else:
                assert r.status_code == 200, r.text
                assert [it["caption"] for it in r.json()["results"]] == ["a red picture", "a blue picture"]
        if rejected:
            break
    assert rejected, "16 simultaneous requests never filled a queue of 2 images"
    metrics = scrape(limited)
    assert metrics["captioner_queue_rejections_total"][()] >= len(rejected)
    assert metrics["captioner_batch_size_bucket"][(("le", "1.0"),)] == metrics["captioner_batch_size_count"][()]
    good_request(limited)
