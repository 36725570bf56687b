"""Reading uploads: the request body under a size limit, multipart or raw, into memory.

The body is read chunk by chunk and refused with 413 as soon as it passes
``max_body_bytes`` (a declared ``Content-Length`` above the limit is refused before
reading anything). Multipart bodies are then split by ``python-multipart``'s streaming
parser in a worker thread (a body of many small parts takes a while to split, and the
event loop must keep answering ``/healthz`` meanwhile); every part named ``file`` is one
image. A body of more than ``max_files`` images or ``MAX_OPTION_PARTS`` other parts is
refused with 413 as soon as the parser reaches the part over the limit. Uploaded file names
are only ever echoed back, cleaned by :func:`clean_filename`; they never touch the file system.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .errors import APIError

#: Multipart field names that carry an image.
FILE_FIELDS = frozenset({"file", "files", "image", "images"})
#: Multipart text fields accepted as generation options (same names as the query parameters).
OPTION_FIELDS = frozenset(
    {"beam_size", "max_length", "timeout", "labels", "length_penalty", "no_repeat_ngram_size", "num_captions"}
)
#: Most option parts in one body (repeats included). The three options need three; the
#: limit leaves room for clients that repeat them and stops bodies of endless tiny parts.
MAX_OPTION_PARTS = 2048
RAW_TYPES = ("image/", "application/octet-stream")
MAX_FILENAME = 200


@dataclass
class Upload:
    """One uploaded image, still as bytes."""

    filename: str | None  # cleaned, for echoing only
    data: bytes
    content_type: str | None = None
    max_pixels: int | None = None  # the most its decode may produce: its header's size (service.client_limits)


def clean_filename(name: str | bytes | None) -> str | None:
    """A client's file name made safe to echo: last path component only, no control or
    formatting characters (no bidi overrides), NFC-normalised, at most 200 characters."""
    if name is None:
        return None
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="replace")
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        name = (
            (stem[: MAX_FILENAME - len(ext) - 2] + "\u2026." + ext) if dot and len(ext) <= 10 else name[:MAX_FILENAME]
        )
    return name or None


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole body, or APIError 413 as soon as it exceeds ``limit`` bytes, or 408 when
    it has not fully arrived within ``timeout_s`` seconds (a client trickling its body)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # int() would take "-1", " 1_0", "٣"
            raise APIError(400, "bad_request", f"invalid Content-Length header {declared[:40]!r}")
        declared_n = int(declared)
        if declared_n > limit:
            raise APIError(413, "body_too_large", f"the request body is {declared_n} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise APIError(413, "body_too_large", f"the request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout_s:g} s; send it faster or in smaller requests",
        ) from None
    except ClientDisconnect:
        raise APIError(
            400, "client_disconnected", "the client closed the connection before sending the whole body"
        ) from None
    return b"".join(chunks)


def parse_multipart(body: bytes, content_type: str, max_files: int) -> tuple[list[Upload], dict[str, str]]:
    """Split a multipart/form-data body into image uploads and option fields."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise APIError(400, "invalid_multipart", "multipart Content-Type without a boundary parameter")

    uploads: list[Upload] = []
    options: dict[str, str] = {}
    state: dict = {"option_parts": 0}

    def on_part_begin() -> None:
        state.update(headers={}, field=b"", value=b"", data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] += data[start:end]

    def on_part_end() -> None:
        _disposition, opts = parse_options_header(state["headers"].get(b"content-disposition"))
        name = opts.get(b"name", b"").decode("utf-8", errors="replace")
        if name in FILE_FIELDS:
            if len(uploads) >= max_files:
                raise APIError(
                    413,
                    "too_many_files",
                    f"more than {max_files} images in one request; send at most {max_files} per request",
                )
            ctype = state["headers"].get(b"content-type")
            uploads.append(
                Upload(
                    clean_filename(opts.get(b"filename")),
                    bytes(state["data"]),
                    ctype.decode("latin-1") if ctype else None,
                )
            )
        elif name in OPTION_FIELDS:
            state["option_parts"] = state.get("option_parts", 0) + 1
            if state["option_parts"] > MAX_OPTION_PARTS:
                raise APIError(
                    413,
                    "too_many_parts",
                    f"more than {MAX_OPTION_PARTS} option fields in one request; send each option once",
                )
            options[name] = bytes(state["data"]).decode("utf-8", errors="replace").strip()
        else:
            shown = clean_filename(name) or "(unnamed)"
            raise APIError(
                422,
                "unknown_field",
                f"unexpected form field {shown!r}: send images as 'file' parts "
                f"and options as {', '.join(sorted(OPTION_FIELDS))}",
            )

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise APIError(400, "invalid_multipart", f"the multipart body could not be parsed ({e})") from None
    return uploads, options


async def read_uploads(
    request: Request, *, max_body_bytes: int, max_files: int, body_timeout_s: float | None = None
) -> tuple[list[Upload], dict[str, str]]:
    """Images and form options of a POST: multipart ``file`` parts or one raw image body."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        body = await read_body(request, max_body_bytes, body_timeout_s)
        uploads, options = await anyio.to_thread.run_sync(parse_multipart, body, ctype, max_files)
        del body  # the parts hold their own copies
        if not uploads:
            raise APIError(
                422, "no_image", "the multipart body has no 'file' part; attach images as -F file=@photo.jpg"
            )
        return uploads, options
    if media.startswith(RAW_TYPES):
        body = await read_body(request, max_body_bytes, body_timeout_s)
        name = clean_filename(request.query_params.get("filename"))
        return [Upload(name, body, media)], {}
    shown = media or "no Content-Type"
    raise APIError(
        415,
        "unsupported_media_type",
        f"{shown} is not accepted: send multipart/form-data with 'file' parts, application/json with base64 "
        "'images', or one image as the raw body with its image/* Content-Type "
        "(curl: -H 'Content-Type: image/jpeg' --data-binary @photo.jpg)",
    )
