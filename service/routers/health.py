"""Probes and metrics: ``/healthz`` (alive), ``/readyz`` (serving), ``/metrics`` (Prometheus).

Each probe answers GET and HEAD; only GET is in the OpenAPI document (one operation per
path and method, so every operation id is unique).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..deps import MetricsDep, OptionalServiceDep
from ..errors import ErrorBody, error_response
from ..schemas import Health, Ready

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
@router.head("/healthz", include_in_schema=False, response_model=None)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness: model loaded and not shutting down",
    responses={503: {"model": ErrorBody, "description": "not_ready (draining or not started)"}},
)
@router.head("/readyz", include_in_schema=False, response_model=None)
async def readyz(service: OptionalServiceDep) -> Ready | JSONResponse:
    if service is None or not service.ready:
        why = "the service is shutting down" if service is not None and service.draining else "the model is not loaded"
        return error_response(503, "not_ready", why, {"Retry-After": "1"})
    return Ready(status="ready", model_id=service.model.model_id)


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
@router.head("/metrics", include_in_schema=False, response_model=None)
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=m.content_type)
