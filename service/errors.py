"""Errors as JSON with one stable shape: ``{"error": code, "detail": human text}``.

Every response that is not a success carries that body, whatever raised it: our own
:class:`APIError`, FastAPI's request validation, Starlette's 404/405, or a bug (500). No
HTML error page ever leaves the service. The codes are documented in docs/service.md.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from captioner.errors import ImageLoadError

log = logging.getLogger("service")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="stable machine-readable code, e.g. unsupported_image")
    detail: str = Field(description="what went wrong and what to do, for humans")


class APIError(Exception):
    """Raise anywhere in a request to answer ``status`` with ``{"error": code, "detail": detail}``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


#: ImageLoadError.code -> (HTTP status, error code in the response)
IMAGE_ERRORS: dict[str, tuple[int, str]] = {
    "unsupported": (415, "unsupported_image"),
    "unreadable": (422, "unreadable_image"),
    "empty": (422, "empty_image"),
    "too_large": (413, "image_too_large"),
    "not_found": (422, "unreadable_image"),
}

#: Default error code for a plain HTTP status (404 from routing, 405, ...).
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


def image_error(e: ImageLoadError) -> tuple[int, str]:
    """(status, code) for an image that could not be loaded."""
    return IMAGE_ERRORS.get(e.code, (422, "unreadable_image"))


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) if loc else "request"


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path. Starlette's 405 names only the methods
    of the last route it tried (a path served by a GET and a HEAD route said ``Allow: HEAD``)."""
    scope = {k: request.scope.get(k) for k in ("type", "path", "root_path")}
    routes = request.app.router.routes
    return [m for m in METHODS if any(r.matches({**scope, "method": m})[0] is Match.FULL for r in routes)]


def install_error_handlers(app: FastAPI) -> None:
    """Make every error path answer JSON in the shape of :class:`ErrorBody`."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers, exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{_location(tuple(e.get('loc', ())))}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            allow = ", ".join(allowed_methods(request)) or (exc.headers or {}).get("Allow", "")
            detail = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allow}" if allow else "")
            return error_response(405, code, detail, {**dict(exc.headers or {}), "Allow": allow})
        else:
            detail = str(exc.detail)
        return error_response(exc.status_code, code, detail, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug, not bad input
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "the server failed to handle this request; it has been logged")
