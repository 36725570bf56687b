"""Probes and metrics: ``/healthz`` (alive), ``/readyz`` (serving), ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..errors import ErrorBody, error_response

router = APIRouter(tags=["operations"])


@router.api_route("/healthz", methods=["GET", "HEAD"], summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route(
    "/readyz",
    methods=["GET", "HEAD"],
    summary="Readiness: model loaded and not shutting down",
    responses={503: {"model": ErrorBody, "description": "not_ready (draining or not started)"}},
)
async def readyz(request: Request) -> JSONResponse:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        why = "the service is shutting down" if service is not None and service.draining else "the model is not loaded"
        return error_response(503, "not_ready", why, {"Retry-After": "1"})
    return JSONResponse({"status": "ready", "model_id": service.model.model_id})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
