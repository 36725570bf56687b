"""``POST /v1/captions`` and ``GET /v1/model``: the versioned API (needs the API key when one is set)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..auth import require_api_key
from ..captioning import CaptionService
from ..errors import APIError, ErrorBody
from ..uploads import read_uploads

router = APIRouter(prefix="/v1", tags=["captions"], dependencies=[Depends(require_api_key)])


class CaptionItem(BaseModel):
    """One image of the request: a caption, or an error for this image alone."""

    index: int = Field(description="position of the image in the request, from 0")
    filename: str | None = Field(description="the uploaded file name, cleaned (echoed only, never used as a path)")
    caption: str | None = Field(None, description="the caption (absent when this image failed)")
    score: float | None = Field(None, description="log-probability of the caption under the model")
    time_ms: float = Field(description="time spent on this image: decoding, queueing and the model")
    batch_size: int | None = Field(None, description="images in the model batch this one ran in")
    error: str | None = Field(None, description="error code when this image failed")
    detail: str | None = Field(None, description="what went wrong with this image")


class CaptionResponse(BaseModel):
    model_id: str
    beam_size: int
    max_length: int
    succeeded: int
    failed: int
    time_ms: float
    results: list[CaptionItem]


UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "one or more images (repeat the 'file' part)",
                    },
                    "beam_size": {"type": "integer"},
                    "max_length": {"type": "integer"},
                },
                "required": ["file"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "malformed multipart body (invalid_multipart)",
        401: "API key missing or wrong (unauthorized)",
        413: "body_too_large, too_many_files, or the only image is image_too_large",
        415: "unsupported_media_type, or the only image is unsupported_image",
        422: "invalid_option / invalid_request / no_image / unknown_field, or every image failed",
        503: "queue_full or not_ready; see Retry-After",
        504: "timeout",
    }.items()
}


def _service(request: Request) -> CaptionService:
    return request.app.state.service


def _int_option(name: str, query_value: int | None, form: dict[str, str]) -> int | None:
    if name not in form:
        return query_value
    try:
        return int(form[name])
    except ValueError:
        raise APIError(422, "invalid_option", f"{name} must be an integer, got {form[name]!r}") from None


@router.post(
    "/captions",
    response_model=CaptionResponse,
    responses=ERRORS,
    openapi_extra={"requestBody": UPLOAD_BODY},
    summary="Caption one or more images",
)
async def create_captions(
    request: Request,
    beam_size: Annotated[int | None, Query(description="beam width, 1 = greedy (default: the server's)")] = None,
    max_length: Annotated[int | None, Query(description="most words per caption (default: the model's)")] = None,
    timeout: Annotated[
        float | None, Query(gt=0, description="seconds this request may take, at most the server's limit")
    ] = None,
    filename: Annotated[str | None, Query(description="name to echo for a raw image body")] = None,
) -> JSONResponse:
    """Multipart with one or more ``file`` parts, or one image as the raw body (``image/*``).

    200 when at least one image got a caption (failed images carry ``error`` and
    ``detail`` in their entry); when every image failed, the status of their error (or
    422 when they differ) with ``{"error", "detail"}`` and the same ``results`` list.
    """
    started = time.monotonic()
    service = _service(request)
    s = service.settings
    uploads, form = await read_uploads(
        request, max_body_bytes=s.max_body_bytes, max_files=s.max_files, body_timeout_s=s.body_timeout_s
    )
    opts = service.options(_int_option("beam_size", beam_size, form), _int_option("max_length", max_length, form))
    if "timeout" in form:
        try:
            timeout = float(form["timeout"])
        except ValueError:
            raise APIError(
                422, "invalid_option", f"timeout must be a number of seconds, got {form['timeout']!r}"
            ) from None
        if not timeout > 0:
            raise APIError(422, "invalid_option", "timeout must be > 0 seconds")
    limit = s.request_timeout_s if timeout is None else min(timeout, s.request_timeout_s)

    items = await service.caption(uploads, opts, limit)
    ok = sum(1 for it in items if it.error is None)
    body: dict[str, Any] = {
        "model_id": service.model.model_id,
        "beam_size": opts.beam_size,
        "max_length": opts.max_length,
        "succeeded": ok,
        "failed": len(items) - ok,
        "time_ms": round((time.monotonic() - started) * 1000.0, 1),
        "results": [it.to_json() for it in items],
    }
    if ok:
        return JSONResponse(body)
    statuses = {it.status for it in items}
    codes = {it.error for it in items}
    status = statuses.pop() if len(statuses) == 1 else 422
    code = codes.pop() if len(codes) == 1 else "all_failed"
    detail = (
        items[0].detail
        if len(items) == 1
        else f"none of the {len(items)} images could be captioned: " + "; ".join(str(it.detail) for it in items)
    )
    return JSONResponse({"error": code, "detail": detail, **body}, status_code=status)


@router.get("/model", summary="The loaded model and this server's limits")
async def model_info(request: Request) -> dict[str, Any]:
    """Encoder, decoder settings, vocabulary size, training data and metrics from the checkpoint."""
    return _service(request).describe()
