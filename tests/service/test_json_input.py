"""JSON uploads (``{"images": [{"data": "<base64>", "name": ...}], ...options}``) against real
uvicorn servers: the same captions, limits, errors and OpenAPI documentation as multipart.
"""

from __future__ import annotations

import base64
import io
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from servicekit import API_KEY, COLOURS, colour_image
from test_api import TRUNCATED_PNG, assert_error, good_request
from test_contract import undocumented

from captioner.service.errors import APIError
from captioner.service.uploads import OPTION_FIELDS

AUTH = {"Authorization": f"Bearer {API_KEY}"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post_json(c: httpx.Client, doc: Any, **kw) -> httpx.Response:
    return c.post("/v1/captions", content=json.dumps(doc), headers={"Content-Type": "application/json"}, **kw)


def test_json_images_get_the_captions_and_scores_multipart_gets(server):
    names = list(COLOURS)
    images = [colour_image(n, 300 + i, fmt="PNG" if i % 2 else "JPEG") for i, n in enumerate(names)]
    doc = {
        "images": [
            {"data": b64(images[0]), "name": "dir/red.jpg"},
            {"data": "data:image/png;base64," + b64(images[1])},  # what a browser's FileReader gives
            {"data": "\n".join(b64(images[2])[i : i + 76] for i in range(0, len(b64(images[2])), 76))},  # MIME lines
            {"data": b64(images[3]), "name": None},
        ],
        "beam_size": 2,  # wins over the query's 1
        "max_length": 6,
    }
    with server.client() as c:
        r = post_json(c, doc, params={"beam_size": 1})
        multipart = c.post(
            "/v1/captions",
            files=[("file", (f"{n}.img", data)) for n, data in zip(names, images)],
            data={"beam_size": "2", "max_length": "6"},
        )
    assert r.status_code == 200, r.text
    body, same = r.json(), multipart.json()
    assert (body["succeeded"], body["failed"], body["beam_size"], body["max_length"]) == (4, 0, 2, 6)
    assert [it["caption"] for it in body["results"]] == [f"a {n} picture" for n in names]
    assert [it["file"] for it in body["results"]] == ["red.jpg", None, None, None]
    assert [it["score"] for it in body["results"]] == [it["score"] for it in same["results"]]


# name -> (JSON text or document, status, code, words the detail must contain)
JSON_ERRORS: dict[str, tuple[Any, int, str, str]] = {
    "not JSON": ("{images: [", 400, "invalid_json", "could not be parsed"),
    "nested too deep": ("[" * 100_000, 400, "invalid_json", "nested too deep"),
    "not UTF-8": (b'{"images": "\xff"}', 400, "invalid_json", "could not be parsed"),
    "a list, not an object": ([], 422, "invalid_request", "must be an object"),
    "no images": ({"beam_size": 2}, 422, "no_image", "no images"),
    "empty images": ({"images": []}, 422, "no_image", "no images"),
    "images not a list": ({"images": "abc"}, 422, "invalid_request", "must be a list"),
    "unknown top-level field": ({"images": [{"data": "AA=="}], "beam": 2}, 422, "unknown_field", "'beam'"),
    "a URL instead of bytes": ({"images": [{"url": "http://169.254.169.254/"}]}, 422, "unknown_field", "fetch URLs"),
    "unknown image field": ({"images": [{"data": "AA==", "mime": "png"}]}, 422, "unknown_field", "'mime'"),
    "data not a string": ({"images": [{"data": 12}]}, 422, "invalid_request", "base64"),
    "name not a string": ({"images": [{"data": "AA==", "name": 1}]}, 422, "invalid_request", "name"),
    "bad base64": ({"images": [{"data": "iVBOR%%w0K", "name": "x.png"}]}, 422, "invalid_base64", "x.png"),
    "non-ASCII base64": ({"images": [{"data": "iVBO\u0663w0K"}]}, 422, "invalid_base64", "images[0]"),
    "beam size out of range": ({"images": [{"data": "AA=="}], "beam_size": 9}, 422, "invalid_option", "1 to 5"),
    "beam size as a string": ({"images": [{"data": "AA=="}], "beam_size": "2"}, 422, "invalid_option", "JSON number"),
    "beam size 2.0": ({"images": [{"data": "AA=="}], "beam_size": 2.0}, 422, "invalid_option", "an integer"),
    "beam size true": ({"images": [{"data": "AA=="}], "beam_size": True}, 422, "invalid_option", "got true"),
    "timeout above the server's": ({"images": [{"data": "AA=="}], "timeout": 31}, 422, "invalid_option", "to 30"),
    "the only image not an image": ({"images": [{"data": b64(b"notes")}]}, 415, "unsupported_image", "image 1"),
    "the only image truncated": ({"images": [{"data": b64(TRUNCATED_PNG)}]}, 422, "unreadable_image", ""),
    "the only image empty": ({"images": [{"data": "", "name": "e.png"}]}, 422, "empty_image", "e.png"),
}


@pytest.mark.parametrize("case", list(JSON_ERRORS))
def test_a_bad_json_request_gets_its_documented_error(server, case):
    doc, status, code, words = JSON_ERRORS[case]
    content = doc if isinstance(doc, str | bytes) else json.dumps(doc)
    with server.client() as c:
        r = c.post("/v1/captions", content=content, headers={"Content-Type": "application/json; charset=utf-8"})
    body = assert_error(r, status, code)
    assert words in body["detail"], body["detail"]
    good_request(server)


def test_one_bad_json_image_fails_only_its_own_entry(server):
    doc = {"images": [{"data": b64(colour_image("red", 310))}, {"data": b64(b"GIF89a broken"), "name": "b.gif"}]}
    with server.client() as c:
        r = post_json(c, doc)
    assert r.status_code == 200, r.text
    ok, bad = r.json()["results"]
    assert ok["caption"] == "a red picture" and "error" not in ok
    assert (bad["file"], bad["error"]) == ("b.gif", "unreadable_image") and "caption" not in bad


def test_json_bodies_meet_the_upload_limits(limited):
    """The limited server: 64 KiB bodies, 2 images, 250,000 pixels, an API key."""
    small = {"data": b64(colour_image("green", 320))}
    with limited.client(headers=AUTH) as c:
        assert_error(post_json(c, {"images": [small] * 3}), 413, "too_many_files")
        assert_error(post_json(c, {"images": [{"data": "A" * 100_000}]}), 413, "body_too_large")

        def chunks():  # no Content-Length: the limit trips while streaming
            yield b'{"images": [{"data": "'
            for _ in range(10):
                yield b"A" * 10_000

        r = c.post("/v1/captions", content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(r, 413, "body_too_large")
        assert "content-length" not in {k.lower() for k in r.request.headers}
        buf = io.BytesIO()
        Image.new("RGB", (600, 600), (30, 200, 30)).save(buf, "PNG")  # 360,000 pixels, 2 KB
        assert_error(post_json(c, {"images": [{"data": b64(buf.getvalue())}]}), 413, "image_too_large")
        r = post_json(c, {"images": [small, small]})
        assert [it["caption"] for it in r.json()["results"]] == ["a green picture"] * 2
    with limited.client(auth=False) as c:
        assert_error(post_json(c, {"images": [small]}), 401, "unauthorized")
    good_request(limited)


def test_a_declared_json_body_over_the_limit_is_refused_before_it_is_sent(limited):
    host, port = limited.host_port
    head = (
        f"POST /v1/captions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.sendall(head.encode())  # and never a byte of the body
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer[:300]
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"] == "body_too_large"
    good_request(limited)


def test_openapi_documents_the_json_body_and_the_docs_say_why_no_urls(server):
    with server.client() as c:
        schema = c.get("/openapi.json").json()
    content = schema["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    body = content["application/json"]["schema"]
    form = content["multipart/form-data"]["schema"]["properties"]
    images = body["properties"]["images"]
    assert body["required"] == ["images"] and body["additionalProperties"] is False
    assert (images["minItems"], images["maxItems"]) == (1, 16)
    assert set(images["items"]["properties"]) == {"data", "name"} and images["items"]["required"] == ["data"]
    assert images["items"]["properties"]["data"]["contentEncoding"] == "base64"
    assert set(body["properties"]) - {"images"} == OPTION_FIELDS
    for name in OPTION_FIELDS:  # the same ranges as the form fields
        limits = {k: v for k, v in body["properties"][name].items() if k != "description"}
        assert limits == {k: v for k, v in form[name].items() if k != "description"}, name
    request = {"images": [{"data": "AA==", "name": "a.png"}], "beam_size": 2, "length_penalty": 0.5}
    assert undocumented(schema, body, request) == []
    assert undocumented(schema, body, {"images": [{"url": "http://x"}]}) != []
    text = DOCS.read_text()
    assert "application/json" in text and "SSRF" in text and "never fetches an image from a URL" in text


def test_counts_and_sizes_are_checked_before_any_base64_is_decoded():
    """Straight on the parser: the refusals that need no decoding come first, so a body of
    bad base64 is refused by its image count and its images' sizes, not after decoding them."""
    from captioner.service.json_uploads import decoded_size, parse_json_images
    from captioner.service.params import LENGTH_PENALTY_RANGE

    def parse(doc: Any, **limits: int):
        body = json.dumps(doc).encode()
        return parse_json_images(body, options={"length_penalty": LENGTH_PENALTY_RANGE}, **limits)

    not_base64 = "%" * 200
    with pytest.raises(APIError) as e:
        parse({"images": [{"data": not_base64}] * 3}, max_files=2, max_image_bytes=10_000)
    assert (e.value.status, e.value.code) == (413, "too_many_files")
    with pytest.raises(APIError) as e:
        parse({"images": [{"data": not_base64, "name": "big.png"}]}, max_files=2, max_image_bytes=100)
    assert (e.value.status, e.value.code) == (413, "image_too_large") and "big.png" in e.value.detail
    with pytest.raises(APIError) as e:
        parse({"images": [{"data": not_base64}], "length_penalty": 9}, max_files=2, max_image_bytes=10_000)
    assert e.value.code == "invalid_option"  # options too
    with pytest.raises(APIError) as e:
        parse({"images": [{"data": not_base64}]}, max_files=2, max_image_bytes=10_000)
    assert e.value.code == "invalid_base64"  # and only then the decoding
    exact = base64.b64encode(b"x" * 100).decode()  # 136 characters, 100 bytes
    assert decoded_size(exact) >= 100 and parse({"images": [{"data": exact}]}, max_files=1, max_image_bytes=102)
