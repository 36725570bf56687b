"""JSON uploads: ``{"images": [{"data": "<base64>", "name": "..."}], ...options}``.

For clients that cannot send multipart (serverless functions, many API gateways). A JSON
body meets the same limits as any other upload, in the same order, each before the next
costs anything:

1. the body: admission reserves it (service.admission), a ``Content-Length`` above
   ``max_body_bytes`` is refused before a byte is read, and a streamed body is cut off as
   soon as it passes the limit (:func:`service.uploads.read_body`);
2. the shape, the options and the number of images (at most ``max_files``) are checked
   before any image is decoded;
3. each image's size is computed from its base64 length and checked against the per-image
   byte limit before it is decoded; then its bytes take the multipart path (same decoder,
   same per-image errors).

The server never fetches a URL for a client: a ``url`` field is refused with a note. A
server that fetches addresses given by strangers can be made to reach its own internal
network (server-side request forgery); docs/service.md says so.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any

from captioner.options import Range

from .errors import APIError
from .uploads import Upload, clean_filename

JSON_MEDIA_TYPE = "application/json"
IMAGE_KEYS = frozenset({"data", "name"})
#: ``data:image/png;base64,`` before the base64 text (what a browser's FileReader gives).
DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)
WHITESPACE = re.compile(r"[ \t\r\n]+")  # MIME encoders wrap base64 lines
NO_URLS = (
    "the server does not fetch URLs (fetching addresses sent by clients would let anyone reach "
    "the server's own network); download the image yourself and send its bytes base64-encoded in 'data'"
)


def decoded_size(text: str) -> int:
    """The most bytes ``text`` (base64, padding included) can decode to, without decoding it."""
    return (len(text) + 3) // 4 * 3


def _shape_error(detail: str) -> APIError:
    return APIError(422, "invalid_request", detail)


def _option(name: str, value: Any, allowed: Range) -> float | None:
    """A JSON option: a JSON number (a whole one for integer options) within its range, or null."""
    if value is None:
        return None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or (allowed.integer and not isinstance(value, int)) or not allowed.contains(value):
        shown = json.dumps(value)[:40]
        raise APIError(422, "invalid_option", f"{allowed.message()} (a JSON number), got {shown}")
    return int(value) if allowed.integer else float(value)


def _image(index: int, entry: Any, max_image_bytes: int) -> Upload:
    """One ``{"data", "name"}`` entry as an :class:`Upload`; its size is checked before decoding."""
    where = f"images[{index}]"
    if not isinstance(entry, dict):
        raise _shape_error(f'{where} must be an object {{"data": "<base64>", "name": "..."}}')
    if "url" in entry:
        raise APIError(422, "unknown_field", f"{where}.url: {NO_URLS}")
    unknown = sorted(set(entry) - IMAGE_KEYS)
    if unknown:
        raise APIError(
            422, "unknown_field", f"{where} has unexpected field {unknown[0][:40]!r}; an image takes 'data' and 'name'"
        )
    name, data = entry.get("name"), entry.get("data")
    if name is not None and not isinstance(name, str):
        raise _shape_error(f"{where}.name must be a string")
    if not isinstance(data, str):
        raise _shape_error(f"{where}.data must be a string: the image's bytes, base64-encoded")
    shown = clean_filename(name) or f"image {index + 1}"
    prefix = DATA_URL.match(data)
    text = data[prefix.end() :] if prefix else data
    if decoded_size(text) > max_image_bytes:
        raise APIError(
            413, "image_too_large", f"{shown}: more than {max_image_bytes} bytes once decoded; the limit per image"
        )
    try:
        raw = base64.b64decode(WHITESPACE.sub("", text) if WHITESPACE.search(text) else text, validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise APIError(
            422, "invalid_base64", f"{shown}: {where}.data is not valid base64 (standard alphabet, '=' padding)"
        ) from None
    return Upload(clean_filename(name), raw)


def parse_json_images(
    body: bytes, *, max_files: int, max_image_bytes: int, options: Mapping[str, Range]
) -> tuple[list[Upload], dict[str, float]]:
    """The images and options of a JSON body (module docstring); :class:`APIError` when refused.

    ``options`` maps every option the body may carry to its allowed range."""
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as e:
        raise APIError(
            400, "invalid_json", f"the JSON body could not be parsed ({e.msg} at {e.lineno}:{e.colno})"
        ) from None
    except UnicodeDecodeError:
        raise APIError(400, "invalid_json", "the JSON body could not be parsed (not UTF-8 text)") from None
    except RecursionError:  # nesting deeper than the parser's stack
        raise APIError(400, "invalid_json", "the JSON body could not be parsed (nested too deep)") from None
    if not isinstance(doc, dict):
        raise _shape_error('the JSON body must be an object: {"images": [{"data": "<base64>", "name": "..."}]}')
    unknown = sorted(set(doc) - {"images", *options})
    if unknown:
        raise APIError(
            422,
            "unknown_field",
            f"unexpected field {unknown[0][:40]!r}: send 'images' and the options {', '.join(sorted(options))}",
        )
    values = {name: _option(name, doc[name], allowed) for name, allowed in options.items() if name in doc}
    images = doc.get("images")
    if images is None or images == []:
        raise APIError(422, "no_image", 'the JSON body has no images; send {"images": [{"data": "<base64>"}]}')
    if not isinstance(images, list):
        raise _shape_error('\'images\' must be a list of {"data": "<base64>", "name": "..."} objects')
    if len(images) > max_files:
        raise APIError(
            413, "too_many_files", f"more than {max_files} images in one request; send at most {max_files} per request"
        )
    uploads = [_image(i, entry, max_image_bytes) for i, entry in enumerate(images)]
    return uploads, {k: v for k, v in values.items() if v is not None}


def json_body_schema(max_files: int, options: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON request body in OpenAPI terms; ``options`` maps each option to its schema."""
    image = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "the image file's bytes, base64-encoded (a data: URL prefix is accepted); "
                "never a URL: the server does not fetch URLs",
            },
            "name": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "a name to echo as the result's filename (cleaned; never used as a path)",
            },
        },
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "required": ["images"],
        "properties": {
            "images": {"type": "array", "minItems": 1, "maxItems": max_files, "items": image},
            **{k: {**v, "description": "as the query parameter"} for k, v in options.items()},
        },
        "additionalProperties": False,
        "description": "for clients that cannot send multipart: images base64-encoded, options as JSON numbers "
        "(a body option wins over the query parameter)",
    }
