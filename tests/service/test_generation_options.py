"""``length_penalty`` and ``no_repeat_ngram_size`` through the API, end to end on a real uvicorn.

The server runs a checkpoint taught two things the options must change (captionkit's
:func:`teach_checkpoint`): for the red picture "a cat" three times in five and "a cat on a
mat" twice, so beam search prefers the short caption unless a length penalty favours
longer ones; for the blue picture "a red square and a red circle", whose repeated bigram
"a red" survives the default rule (no 3-gram twice) but not ``no_repeat_ngram_size=2``.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator

import httpx
import pytest
from captionkit import teach_checkpoint
from servicekit import Server, colour_image, launch, wait_ready
from test_api import assert_error

CAT = colour_image("red", 500, fmt="PNG")
SHAPES = colour_image("blue", 501, fmt="PNG")
REPEATED = "a red square and a red circle"


@pytest.fixture(scope="module")
def options_server(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("options")
    captions = ["a cat", "a cat", "a cat", "a cat on a mat", "a cat on a mat", REPEATED]
    checkpoint = teach_checkpoint(
        root / "ckpt", [CAT] * 5 + [SHAPES], captions, expect=["a cat"] * 5 + [REPEATED], metadata={}
    )
    proc = launch(checkpoint, root / "server.log")
    server = wait_ready(proc, root / "server.log")
    try:
        yield server
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.stop()


def caption(c: httpx.Client, image: bytes, **options: float) -> str:
    r = c.post("/v1/captions", params=options, files={"file": ("x.png", image)})
    assert r.status_code == 200, r.text
    body = r.json()
    for name, value in options.items():  # the response says what it used
        assert body[name] == value, (name, body)
    return body["results"][0]["caption"]


def test_length_penalty_changes_what_beam_search_picks(options_server):
    with options_server.client() as c:
        assert caption(c, CAT, beam_size=3) == "a cat"
        assert caption(c, CAT, beam_size=3, length_penalty=5) == "a cat on a mat"
        assert caption(c, CAT, length_penalty=5) == "a cat"  # greedy: no effect
        form = c.post("/v1/captions", data={"beam_size": "3", "length_penalty": "5.0"}, files={"file": ("c", CAT)})
        doc = {"images": [{"data": base64.b64encode(CAT).decode()}], "beam_size": 3, "length_penalty": 5}
        js = c.post("/v1/captions", content=json.dumps(doc), headers={"Content-Type": "application/json"})
    assert form.json()["results"][0]["caption"] == js.json()["results"][0]["caption"] == "a cat on a mat"


def test_no_repeat_ngram_size_changes_the_caption(options_server):
    with options_server.client() as c:
        assert caption(c, SHAPES) == REPEATED
        assert caption(c, SHAPES, no_repeat_ngram_size=0) == REPEATED
        shorter = caption(c, SHAPES, no_repeat_ngram_size=2)
        unigram = caption(c, SHAPES, beam_size=2, no_repeat_ngram_size=1)
        r = c.post("/v1/captions", files={"file": ("x.png", SHAPES)})
    assert shorter != REPEATED and shorter.startswith("a red square and a")
    words = shorter.split()
    assert not any(words[i : i + 2] == words[j : j + 2] for i in range(len(words)) for j in range(i + 1, len(words)))
    assert len(set(unigram.split())) == len(unigram.split())  # n = 1: no word twice
    assert r.json()["no_repeat_ngram_size"] == 3 and r.json()["length_penalty"] == 0


@pytest.mark.parametrize(
    "where, value, words",
    [
        ("params", {"length_penalty": 5.5}, "length_penalty must be a number from 0 to 5, got 5.5"),
        ("params", {"length_penalty": -1}, "from 0 to 5"),
        ("params", {"no_repeat_ngram_size": 11}, "no_repeat_ngram_size must be an integer from 0 to 10, got 11"),
        ("data", {"no_repeat_ngram_size": "2.0"}, "an integer from 0 to 10"),
        ("data", {"length_penalty": "nan"}, "from 0 to 5"),
        ("json", {"no_repeat_ngram_size": -1}, "from 0 to 10"),
    ],
)
def test_the_options_are_checked_against_their_ranges(options_server, where, value, words):
    with options_server.client() as c:
        if where == "json":
            doc = {"images": [{"data": "AA=="}], **value}
            r = c.post("/v1/captions", content=json.dumps(doc), headers={"Content-Type": "application/json"})
        else:
            r = c.post("/v1/captions", files={"file": ("x.png", CAT)}, **{where: value})
    assert words in assert_error(r, 422, "invalid_option")["detail"]


def test_openapi_documents_both_options_with_the_command_lines_ranges(options_server):
    from captioner.options import LENGTH_PENALTY, NO_REPEAT_NGRAM

    with options_server.client() as c:
        op = c.get("/openapi.json").json()["paths"]["/v1/captions"]["post"]
    params = {p["name"]: p for p in op["parameters"]}
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    for name, rng, kind in (
        ("length_penalty", LENGTH_PENALTY, "number"),
        ("no_repeat_ngram_size", NO_REPEAT_NGRAM, "integer"),
    ):
        for schema in (params[name]["schema"], form[name]):
            assert (schema["type"], schema["minimum"], schema["maximum"]) == (kind, rng.low, rng.high)
        assert params[name]["description"]
