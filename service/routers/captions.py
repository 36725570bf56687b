"""``POST /v1/captions`` and ``GET /v1/model``: the versioned API (needs the API key when one is set).

The router is built per app (:func:`build_router`) so the documented ranges of the options
are this server's own (``max_beam_size``, ``max_length_limit``, ``request_timeout_s``).
"""

# No ``from __future__ import annotations``: the endpoint's parameter annotations use this
# server's limits (closure variables), so they must be evaluated where they are written.
import functools
import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import WithJsonSchema

from captioner.options import LABELS, NUM_CAPTIONS, Range
from captioner.runtime.search import DEFAULT_NO_REPEAT_NGRAM

from ..auth import require_api_key
from ..captioning import GenerationOptions, ItemResult
from ..client_limits import caption_within_budgets
from ..deps import ServiceDep
from ..errors import APIError, ErrorBody
from ..json_uploads import JSON_MEDIA_TYPE, json_body_schema, parse_json_images
from ..params import (
    LENGTH_PENALTY_RANGE,
    NO_REPEAT_NGRAM_RANGE,
    ascii_int,
    ascii_number,
    beam_range,
    check_range,
    form_number,
    length_range,
    reject_unknown_query,
    timeout_range,
)
from ..public import public_model_info
from ..schemas import CaptionFailure, CaptionItem, CaptionResponse, ModelInfo
from ..settings import Settings
from ..uploads import FILE_FIELDS, OPTION_FIELDS, Upload, read_body, read_uploads

#: The name the documentation leads with; the other accepted names are aliases of it.
MAIN_FILE_FIELD = "file"


def upload_body(settings: Settings) -> dict[str, Any]:
    """The request body in OpenAPI terms, from the names :mod:`service.uploads` accepts."""
    files: dict[str, Any] = {
        name: {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
            "maxItems": settings.max_files,
            "description": f"one or more images, at most {settings.max_files} (repeat the '{name}' part)"
            if name == MAIN_FILE_FIELD
            else f"another accepted name for '{MAIN_FILE_FIELD}'",
        }
        for name in sorted(FILE_FIELDS, key=lambda n: (n != MAIN_FILE_FIELD, n))
    }
    options = {
        name: timeout_schema(settings) if name == "timeout" else range_schema(allowed)
        for name, allowed in option_ranges(settings).items()
    }
    if set(options) != set(OPTION_FIELDS):  # a form option the upload reader accepts must be documented here
        raise RuntimeError(f"form options documented {sorted(options)} != accepted {sorted(OPTION_FIELDS)}")
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **files,
                        **{k: {**v, "description": "as the query parameter"} for k, v in options.items()},
                    },
                    "additionalProperties": False,
                    "anyOf": [{"required": [name]} for name in files],  # at least one image, under any name
                    "description": f"images as parts named {', '.join(repr(n) for n in files)}; "
                    "options as form fields (a field of any other name is refused with 422 unknown_field)",
                }
            },
            JSON_MEDIA_TYPE: {"schema": json_body_schema(settings.max_files, options)},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }


def option_schema(kind: str, low: float, high: float) -> dict[str, Any]:
    return {
        "type": kind,
        "minimum": int(low) if kind == "integer" else low,
        "maximum": int(high) if kind == "integer" else high,
    }


def range_schema(allowed: Range) -> dict[str, Any]:
    return option_schema("integer" if allowed.integer else "number", allowed.low, allowed.high)


def timeout_schema(settings: Settings) -> dict[str, Any]:
    return {"type": "number", "minimum": timeout_range(settings).low, "maximum": settings.request_timeout_s}


def option_ranges(settings: Settings) -> dict[str, Range]:
    """Every option a request may carry (query, form field or JSON member) and its range here."""
    return {
        "beam_size": beam_range(settings),
        "max_length": length_range(settings),
        "timeout": timeout_range(settings),
        "labels": LABELS,
        "length_penalty": LENGTH_PENALTY_RANGE,
        "no_repeat_ngram_size": NO_REPEAT_NGRAM_RANGE,
        "num_captions": num_captions_range(settings),
    }


def num_captions_range(settings: Settings) -> Range:
    """n-best: the command line's range under the API's name, capped by this server's beam size."""
    return Range("num_captions", NUM_CAPTIONS.low, min(NUM_CAPTIONS.high, settings.max_beam_size))


def check_num_captions(num_captions: int, beam_size: int) -> None:
    """422 ``invalid_option`` when more captions are asked for than beam search keeps."""
    if num_captions > beam_size:
        raise APIError(
            422,
            "invalid_option",
            f"num_captions must be at most beam_size ({beam_size}), got {num_captions}; "
            f"raise beam_size to {num_captions} or more",
        )


async def read_images(
    request: Request, settings: Settings, ranges: dict[str, Range]
) -> tuple[list[Upload], dict[str, float]]:
    """The images and body options of a POST: JSON (service.json_uploads), multipart or a raw image."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    s = settings
    if media == JSON_MEDIA_TYPE:
        body = await read_body(request, s.max_body_bytes, s.body_timeout_s)
        parse = functools.partial(
            parse_json_images, body, max_files=s.max_files, max_image_bytes=s.max_body_bytes, options=ranges
        )
        return await anyio.to_thread.run_sync(parse)  # a large body takes a while to parse and decode
    uploads, form = await read_uploads(
        request, max_body_bytes=s.max_body_bytes, max_files=s.max_files, body_timeout_s=s.body_timeout_s
    )
    values = {}
    for name, text in form.items():
        values[name] = form_number(name, text, ranges[name])
        check_range(values[name], ranges[name])
    return uploads, values


ERROR_TEXTS: dict[int, str] = {
    400: "malformed multipart body (invalid_multipart) or JSON body (invalid_json), bad Content-Length (bad_request)",
    401: "API key missing or wrong (unauthorized)",
    408: "the body did not arrive in time (body_timeout) or fell behind the slowest accepted rate (body_too_slow)",
    413: "body_too_large, too_many_files, too_many_pixels, or the only image is image_too_large",
    415: "unsupported_media_type, or the only image is unsupported_image",
    422: "invalid_option / invalid_request / unknown_parameter / no_image / unknown_field / invalid_base64 / "
    "explain_unavailable, or every image failed",
    429: "client_busy: this client holds its share of the pixels or buffered bytes; see Retry-After",
    503: "queue_full, busy or not_ready; see Retry-After",
    504: "timeout",
}
#: Statuses whose body may also carry the per-image ``results`` (every image failed).
IMAGE_FAILURE_STATUSES = (413, 415, 422)


def error_responses() -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "model": CaptionFailure | ErrorBody if status in IMAGE_FAILURE_STATUSES else ErrorBody,
            "description": text,
        }
        for status, text in ERROR_TEXTS.items()
    }


def build_response(
    model_id: str, opts: GenerationOptions, items: list[ItemResult], started: float
) -> CaptionResponse | JSONResponse:
    """200 with a :class:`CaptionResponse` when an image got a caption, else the failure."""
    entries = [CaptionItem.from_result(it) for it in items]
    ok = sum(1 for it in items if it.error is None)
    fields: dict[str, Any] = dict(
        model_id=model_id,
        beam_size=opts.beam_size,
        max_length=opts.max_length,
        length_penalty=opts.length_penalty,
        no_repeat_ngram_size=opts.no_repeat_ngram_size,
        num_captions=opts.num_captions,
        succeeded=ok,
        failed=len(items) - ok,
        time_ms=round((time.monotonic() - started) * 1000.0, 1),
        results=entries,
    )
    if ok:
        return CaptionResponse(**fields)
    statuses = {it.status for it in items}
    codes = {it.error for it in items}
    status = statuses.pop() if len(statuses) == 1 else 422
    code = codes.pop() if len(codes) == 1 else "all_failed"
    detail = (
        items[0].detail
        if len(items) == 1
        else f"none of the {len(items)} images could be captioned: " + "; ".join(str(it.detail) for it in items)
    )
    failure = CaptionFailure(error=str(code), detail=str(detail), **fields)
    return JSONResponse(failure.model_dump(mode="json"), status_code=status)


def build_router(settings: Settings) -> APIRouter:
    """The /v1 routes, documented with this server's limits."""
    router = APIRouter(
        prefix="/v1", tags=["captions"], dependencies=[Depends(require_api_key), Depends(reject_unknown_query)]
    )
    ranges = option_ranges(settings)
    beams, lengths, nbest = ranges["beam_size"], ranges["max_length"], ranges["num_captions"]

    @router.post(
        "/captions",
        response_model=CaptionResponse,
        responses=error_responses(),
        openapi_extra={"requestBody": upload_body(settings)},
        summary="Caption one or more images",
    )
    async def create_captions(
        request: Request,
        service: ServiceDep,
        beam_size: Annotated[
            int | None,
            Query(description=f"beam width, 1 = greedy (default {settings.default_beam_size})"),
            ascii_int("beam_size"),
            WithJsonSchema(option_schema("integer", beams.low, beams.high)),
        ] = None,
        max_length: Annotated[
            int | None,
            Query(description="most words per caption (default: the model's own)"),
            ascii_int("max_length"),
            WithJsonSchema(option_schema("integer", lengths.low, lengths.high)),
        ] = None,
        timeout: Annotated[
            float | None,
            Query(description=f"seconds this request may take (default and most: {settings.request_timeout_s:g})"),
            ascii_number("timeout"),
            WithJsonSchema(timeout_schema(settings)),
        ] = None,
        labels: Annotated[
            int | None,
            Query(description="add the encoder's top-K ImageNet classes to each caption (default 0: none)"),
            ascii_int("labels"),
            WithJsonSchema(range_schema(LABELS)),
        ] = None,
        length_penalty: Annotated[
            float | None,
            Query(
                description="beam search: divide each caption's log-probability by ((5 + length) / 6) ** this, "
                "so higher values favour longer captions (default 0: none; no effect on greedy)"
            ),
            ascii_number("length_penalty"),
            WithJsonSchema(range_schema(LENGTH_PENALTY_RANGE)),
        ] = None,
        no_repeat_ngram_size: Annotated[
            int | None,
            Query(
                description=f"no n-gram of this many words twice in a caption (default {DEFAULT_NO_REPEAT_NGRAM}; "
                "0: off)"
            ),
            ascii_int("no_repeat_ngram_size"),
            WithJsonSchema(range_schema(NO_REPEAT_NGRAM_RANGE)),
        ] = None,
        num_captions: Annotated[
            int | None,
            Query(
                description="the K best captions of each image (beam search's n-best, best first) in each "
                "result's `candidates`, each with its score and confidence; at most beam_size (default 1)"
            ),
            ascii_int("num_captions"),
            WithJsonSchema(range_schema(nbest)),
        ] = None,
        explain: Annotated[
            bool,
            Query(
                description="add each word's attention map (h x w weights and the peak cell); attention models "
                "only, else 422 explain_unavailable"
            ),
        ] = False,
        filename: Annotated[str | None, Query(description="name to echo for a raw image body")] = None,
    ) -> CaptionResponse | JSONResponse:
        """Multipart with one or more ``file`` parts, JSON with base64 ``images``, or one image as the
        raw body (``image/*``).

        200 when at least one image got a caption (failed images carry ``error`` and
        ``detail`` in their entry); when every image failed, the status of their error (or
        422 when they differ) with ``{"error", "detail"}`` and the same ``results`` list.
        """
        started = time.monotonic()
        s = service.settings
        given: dict[str, float | None] = {
            "beam_size": beam_size,
            "max_length": max_length,
            "timeout": timeout,
            "labels": labels,
            "length_penalty": length_penalty,
            "no_repeat_ngram_size": no_repeat_ngram_size,
            "num_captions": num_captions,
        }
        for name, allowed in ranges.items():
            check_range(given[name], allowed)  # before reading the body: a bad option costs nothing
        if explain and not service.model.attends:
            from captioner.explain import NEEDS_ATTENTION

            raise APIError(422, "explain_unavailable", NEEDS_ATTENTION)
        uploads, in_body = await read_images(request, s, ranges)
        given.update(in_body)  # an option in the body wins over the query parameter
        beam, length, limit, ngram = (given[k] for k in ("beam_size", "max_length", "timeout", "no_repeat_ngram_size"))
        opts = service.options(
            None if beam is None else int(beam),
            None if length is None else int(length),
            int(given["labels"] or 0),
            explain,
            length_penalty=float(given["length_penalty"] or 0.0),
            no_repeat_ngram_size=DEFAULT_NO_REPEAT_NGRAM if ngram is None else int(ngram),
            num_captions=int(given["num_captions"] or 1),
        )
        check_num_captions(opts.num_captions, opts.beam_size)
        items = await caption_within_budgets(
            request, service, uploads, opts, s.request_timeout_s if limit is None else limit
        )
        return build_response(service.model.model_id, opts, items, started)

    @router.get(
        "/model",
        response_model=ModelInfo,
        responses={401: {"model": ErrorBody, "description": ERROR_TEXTS[401]}},
        summary="The loaded model and this server's limits",
    )
    async def model_info(service: ServiceDep) -> dict[str, Any]:
        """Encoder, decoder settings, vocabulary size, training data and metrics from the checkpoint
        (absolute paths of the machine that trained it reduced to their last part), and this server's limits."""
        return public_model_info(service.describe())

    return router
