"""Typed FastAPI dependencies for the app's shared resources (kept on ``app.state``).

Routers declare what they need as a parameter type, for example ``service: ServiceDep``,
instead of reaching into ``request.app.state``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .captioning import CaptionService
from .errors import APIError
from .metrics import Metrics
from .settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def find_service(request: Request) -> CaptionService | None:
    """The running service, or None before the model is loaded."""
    service: CaptionService | None = getattr(request.app.state, "service", None)
    return service


def get_service(service: Annotated[CaptionService | None, Depends(find_service)]) -> CaptionService:
    """The running service; 503 ``not_ready`` while the model is still loading."""
    if service is None:
        raise APIError(503, "not_ready", "the model is not loaded yet; retry shortly", {"Retry-After": "1"})
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServiceDep = Annotated[CaptionService, Depends(get_service)]
OptionalServiceDep = Annotated[CaptionService | None, Depends(find_service)]
