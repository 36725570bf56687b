"""The API's contract against real uvicorn servers: what /openapi.json promises is what the
server answers, every option is checked, metrics and model metadata say what they should.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import httpx
import pytest
from servicekit import API_KEY, SECRET_PATH_PARTS, colour_image
from test_api import TRUNCATED_PNG, assert_caption, assert_error, scrape

from captioner.service.uploads import FILE_FIELDS, OPTION_FIELDS

AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
}


# ---------------------------------------------------------------------------- a schema walker
def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def undocumented(schema: dict, node: dict, value: object, where: str = "$") -> list[str]:
    """What in ``value`` (a JSON response) the schema ``node`` does not describe: keys not in
    ``properties``, required keys missing, values of the wrong type. Empty when it all fits."""
    node = resolve(schema, node)
    for key in ("anyOf", "oneOf"):
        if key in node:  # fits when one alternative fits
            tries = [undocumented(schema, alt, value, where) for alt in node[key]]
            return [] if any(not t for t in tries) else min(tries, key=len)
    kind = node.get("type")
    if kind == "null":
        return [] if value is None else [f"{where}: expected null, got {value!r}"]
    if kind and not (isinstance(value, JSON_TYPES[kind]) and not (kind in ("integer", "number") and value is True)):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    problems: list[str] = []
    if isinstance(value, dict) and "properties" in node:
        props = node["properties"]
        problems += [f"{where}.{k}: not in the schema" for k in value if k not in props]
        problems += [f"{where}.{k}: required but absent" for k in node.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                problems += undocumented(schema, props[k], v, f"{where}.{k}")
    elif isinstance(value, list) and "items" in node:
        for i, v in enumerate(value):
            problems += undocumented(schema, node["items"], v, f"{where}[{i}]")
    return problems


def response_schema(schema: dict, path: str, method: str, status: int) -> dict:
    return schema["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]


def test_every_field_the_api_returns_is_in_the_openapi_document(server):
    with server.client() as c:
        schema = c.get("/openapi.json").json()
        mixed = c.post(
            "/v1/captions",
            files=[("file", ("red.png", colour_image("red", 31))), ("file", ("cut.png", TRUNCATED_PNG))],
        )
        samples = [
            ("/v1/captions", "post", mixed),
            ("/v1/captions", "post", c.post("/v1/captions", files={"file": ("a.txt", b"text")})),
            (
                "/v1/captions",
                "post",
                c.post("/v1/captions", files=[("file", ("a.txt", b"t")), ("file", ("b.png", b""))]),
            ),
            ("/v1/captions", "post", c.post("/v1/captions", params={"beam_size": 99}, content=b"x")),
            ("/v1/captions", "post", c.post("/v1/captions", params={"beam": 3}, content=b"x")),
            ("/v1/model", "get", c.get("/v1/model")),
            ("/healthz", "get", c.get("/healthz")),
            ("/readyz", "get", c.get("/readyz")),
        ]
    assert [r.status_code for _, _, r in samples] == [200, 415, 422, 422, 422, 200, 200, 200]
    assert {"error", "detail"} <= set(mixed.json()["results"][1]) and "caption" in mixed.json()["results"][0]
    for path, method, r in samples:
        node = response_schema(schema, path, method, r.status_code)
        assert undocumented(schema, node, r.json()) == [], (path, r.status_code, r.json())
    # the walker does find what is missing from the schema (so the check above can fail)
    extra = {**mixed.json(), "surprise": 1}
    extra["results"] = [{**mixed.json()["results"][0], "no_such_field": 0.5}]
    node = response_schema(schema, "/v1/captions", "post", 200)
    assert undocumented(schema, node, extra) == [
        "$.surprise: not in the schema",
        "$.results[0].no_such_field: not in the schema",
    ]


def test_operation_ids_are_unique_and_no_warning_is_logged(server):
    from captioner.service.app import create_app
    from captioner.service.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a duplicate operation id is a UserWarning: now an error
        schema = create_app(Settings()).openapi()
    ids = [op["operationId"] for item in schema["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) and len(ids) >= 5, ids
    with server.client() as c:
        assert c.get("/openapi.json").status_code == 200
        assert c.head("/healthz").status_code == 200 and c.head("/readyz").status_code == 200
    assert "Duplicate Operation ID" not in server.log_text()
    assert "UserWarning" not in server.log_text()


# ---------------------------------------------------------------------------- options
# (request kwargs, status, code, words the detail must contain)
OPTION_CASES: dict[str, tuple[dict[str, Any], int, str, str]] = {
    "beam size zero": (dict(params={"beam_size": 0}), 422, "invalid_option", "from 1 to 5"),
    "beam size negative": (dict(params={"beam_size": -3}), 422, "invalid_option", "from 1 to 5"),
    "beam size 200": (dict(params={"beam_size": 200}), 422, "invalid_option", "from 1 to 5"),
    "beam size 3.0": (dict(params={"beam_size": "3.0"}), 422, "invalid_request", "ASCII digits"),
    "beam size in Arabic-Indic digits": (dict(params={"beam_size": "\u0663"}), 422, "invalid_request", "ASCII"),
    "beam size with spaces": (dict(params={"beam_size": " 3"}), 422, "invalid_request", "ASCII"),
    "form beam size in Arabic-Indic digits": (dict(data={"beam_size": "\u0663"}), 422, "invalid_option", "1 to 5"),
    "form beam size 3.0": (dict(data={"beam_size": "3.0"}), 422, "invalid_option", "an integer from 1 to 5"),
    "form beam size zero": (dict(data={"beam_size": "0"}), 422, "invalid_option", "from 1 to 5"),
    "max length 51": (dict(params={"max_length": 51}), 422, "invalid_option", "from 1 to 50"),
    "form max length -1": (dict(data={"max_length": "-1"}), 422, "invalid_option", "from 1 to 50"),
    "timeout above the server's": (dict(params={"timeout": 31}), 422, "invalid_option", "to 30"),
    "timeout zero": (dict(params={"timeout": 0}), 422, "invalid_option", "from 0.5 to"),
    "timeout infinite": (dict(params={"timeout": "inf"}), 422, "invalid_request", "ASCII"),
    "form timeout NaN": (dict(data={"timeout": "nan"}), 422, "invalid_option", "from 0.5 to"),
    "unknown query parameter": (
        dict(params={"beam": 3}),
        422,
        "unknown_parameter",
        "unknown query parameter 'beam' (known: beam_size, explain, filename, ",
    ),
    "unknown form field": (dict(data={"beam": "3"}), 422, "unknown_field", "beam"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_every_option_is_checked_and_the_error_names_what_is_allowed(server, case):
    kwargs, status, code, words = OPTION_CASES[case]
    with server.client() as c:
        r = c.post("/v1/captions", files={"file": ("r.png", colour_image("red", 40))}, **kwargs)
    body = assert_error(r, status, code)
    assert words in body["detail"], body["detail"]


def test_plain_ascii_options_work_from_the_query_and_the_form(server):
    with server.client() as c:
        r = c.post(
            "/v1/captions",
            params={"beam_size": "3", "max_length": "5", "timeout": "29.5"},
            files={"file": ("b.png", colour_image("blue", 41))},
        )
        assert_caption(r, "blue")
        assert (r.json()["beam_size"], r.json()["max_length"]) == (3, 5)
        r = c.post(
            "/v1/captions",
            data={"beam_size": "+2", "max_length": "4", "timeout": "1e1"},
            files={"file": ("b.png", colour_image("blue", 42))},
        )
        assert_caption(r, "blue")
        assert (r.json()["beam_size"], r.json()["max_length"]) == (2, 4)
        r = c.get("/v1/model", params={"verbose": "1"})
    assert_error(r, 422, "unknown_parameter")


def test_the_documented_form_names_are_exactly_the_accepted_ones(server):
    with server.client() as c:
        schema = c.get("/openapi.json").json()
        body = schema["paths"]["/v1/captions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        props = body["properties"]
        image_names = {n for n, p in props.items() if p.get("items", {}).get("format") == "binary"}
        assert image_names == FILE_FIELDS and set(props) - image_names == OPTION_FIELDS
        assert body["additionalProperties"] is False
        for i, name in enumerate(sorted(image_names)):  # every documented name works
            assert_caption(
                c.post("/v1/captions", files={name: (f"{name}.png", colour_image("green", 50 + i))}), "green"
            )
        assert_error(
            c.post("/v1/captions", files={"photo": ("p.png", colour_image("green", 60))}), 422, "unknown_field"
        )
        params = {p["name"]: p["schema"] for p in schema["paths"]["/v1/captions"]["post"]["parameters"]}
    assert {"beam_size", "max_length", "timeout", "filename"} <= set(params)
    # the refusal of an unknown query parameter lists exactly the documented ones
    with server.client() as c:
        detail = assert_error(c.post("/v1/captions", params={"beam": 3}, content=b"x"), 422, "unknown_parameter")[
            "detail"
        ]
    assert detail.endswith(f"(known: {', '.join(sorted(params))})"), detail
    assert (params["beam_size"]["minimum"], params["beam_size"]["maximum"]) == (1, 5)
    assert (params["max_length"]["minimum"], params["max_length"]["maximum"]) == (1, 50)
    assert props["beam_size"]["maximum"] == 5 and params["timeout"]["maximum"] == 30


# ---------------------------------------------------------------------------- settings that shape requests
def test_default_beam_size_and_max_length_limit_settings(limited):
    """The limited server runs with --default-beam-size 2 --max-beam-size 3 --max-length-limit 6
    (the model's own max_length is 8)."""
    with limited.client(headers=AUTH) as c:
        r = c.post("/v1/captions", files={"file": ("r.png", colour_image("red", 70))})
        assert_caption(r, "red")
        assert (r.json()["beam_size"], r.json()["max_length"]) == (2, 6)
        r = c.post(
            "/v1/captions", params={"beam_size": 1, "max_length": 6}, files={"file": ("r.png", colour_image("red", 71))}
        )
        assert (r.json()["beam_size"], r.json()["max_length"]) == (1, 6)
        body = assert_error(c.post("/v1/captions", params={"max_length": 7}, content=b"x"), 422, "invalid_option")
        assert "from 1 to 6" in body["detail"]
        body = assert_error(c.post("/v1/captions", params={"beam_size": 4}, content=b"x"), 422, "invalid_option")
        assert "from 1 to 3" in body["detail"]
        service = c.get("/v1/model").json()["service"]
        assert (service["default_beam_size"], service["max_beam_size"], service["max_length_limit"]) == (2, 3, 6)
        assert service["default_max_length"] == 6
        params = {
            p["name"]: p["schema"] for p in c.get("/openapi.json").json()["paths"]["/v1/captions"]["post"]["parameters"]
        }
    assert params["beam_size"]["maximum"] == 3 and params["max_length"]["maximum"] == 6


# ---------------------------------------------------------------------------- public metadata
ABSOLUTE = re.compile(r"""(?<![\w.:/\\~-])(?:/[^\s'"/]+|[A-Za-z]:\\)""")


def test_model_metadata_shows_no_absolute_path_of_the_training_machine(server, limited):
    with server.client() as c:
        text = c.get("/v1/model").text
    with limited.client(headers=AUTH) as c:
        assert "/home/ann" not in c.get("/v1/model").text
    for part in SECRET_PATH_PARTS:
        assert part.replace("\\", "\\\\") not in text and part not in text, part
    assert not ABSOLUTE.search(text), ABSOLUTE.search(text)
    info = httpx.Response(200, text=text).json()["metadata"]
    assert info["dataset"]["path"] == "colours" and info["train_config"]["cache_dir"] == "features"
    assert info["train_config"]["out"] == "runs/colours"  # relative paths say nothing about the machine: kept
    assert info["run"]["command"] == "captioner train --data colours --out runs/colours --cache-dir x"


@pytest.mark.parametrize(
    "raw, public",
    [
        ("/home/ann/data/scenes", "scenes"),
        ("~/data/scenes/", "scenes"),
        ("C:\\Users\\ann\\cache", "cache"),
        ("--data /srv/x/y --out runs/a", "--data y --out runs/a"),
        ("runs/default", "runs/default"),
        ("see https://example.org/a/b", "see https://example.org/a/b"),
        ("3/4 of a / b", "3/4 of a / b"),
    ],
)
def test_strip_paths(raw, public):
    from captioner.service.public import has_absolute_path, strip_paths

    assert strip_paths({"k": [raw]}) == {"k": [public]}
    assert not has_absolute_path(strip_paths(raw))


# ---------------------------------------------------------------------------- metrics
def test_image_error_batch_duration_and_model_metrics_move_as_they_should(server):
    before = scrape(server)
    with server.client() as c:
        assert c.post("/v1/captions", files={"file": ("a.txt", b"not an image")}).status_code == 415
        assert c.post("/v1/captions", files={"file": ("e.png", b"")}).status_code == 422
        assert_caption(c.post("/v1/captions", files={"file": ("r.png", colour_image("red", 80))}), "red")
    after = scrape(server)

    def delta(name: str, labels: tuple = ()) -> float:
        return after[name].get(labels, 0.0) - before.get(name, {}).get(labels, 0.0)

    assert delta("captioner_image_errors_total", (("error", "unsupported_image"),)) == 1
    assert delta("captioner_image_errors_total", (("error", "empty_image"),)) == 1
    assert delta("captioner_batch_duration_seconds_count") == 1  # one model run: the good image
    assert delta("captioner_batch_duration_seconds_sum") > 0
    assert delta("captioner_batch_size_count") == 1
    infos = after["captioner_model_info"]
    assert len(infos) == 1, infos
    ((labels, value),) = infos.items()
    labels = dict(labels)
    assert value == 1.0 and labels["model_id"] == "test-colours" and labels["encoder"] == "efficientnet_lite0"
    assert labels["device"] == "cpu" and labels["backend"] in ("onnxruntime", "pytorch")


def test_metrics_label_the_schema_the_docs_and_files_by_their_route(server):
    before = scrape(server)
    with server.client() as c:
        for path in ("/openapi.json", "/docs", "/docs-assets/swagger-ui.css", "/static/app.js", "/no/such/page"):
            c.get(path)
    after = scrape(server)
    counts = after["captioner_http_requests_total"]

    def delta(route: str, status: str) -> float:
        key = (("method", "GET"), ("route", route), ("status", status))
        return counts.get(key, 0.0) - before["captioner_http_requests_total"].get(key, 0.0)

    assert delta("/openapi.json", "200") == 1 and delta("/docs", "200") == 1
    assert delta("/docs-assets", "200") == 1 and delta("/static", "200") == 1
    assert delta("<unmatched>", "404") == 1  # only what no route serves
