"""The FastAPI application: ``create_app(settings, model)``.

Shared resources live on ``app.state``: ``settings`` (:class:`Settings`), ``metrics``
(:class:`Metrics`, its own Prometheus registry) and ``service`` (:class:`CaptionService`:
the model, the decode pool and the batcher). Routers stay thin and receive them as typed
dependencies (:mod:`service.deps`); responses are the models of :mod:`service.schemas`.

Run it with ``captioner serve`` (recommended: loads the model first, prints where to
point a browser, drains on SIGTERM), or with plain uvicorn:
``uvicorn --factory captioner.service.app:create_app`` (settings from the ``CAPTIONER_*`` environment).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner import __version__
from captioner.runtime.captioner import CaptionerBase, load_captioner

from .admission import AdmissionMiddleware
from .captioning import CaptionService
from .client_limits import ClientLimits
from .errors import error_response, install_error_handlers
from .metrics import Metrics
from .routers import captions, health, page
from .settings import Settings, settings_from_environment

log = logging.getLogger("service")


class ObservabilityMiddleware:
    """Counts and times every HTTP request by route template (``/v1/captions``, never the raw
    path, so unknown URLs cannot blow up the label set) and adds safety headers.

    ``routes`` are the app's routes: a request that no API route claimed (``/openapi.json``,
    a file under ``/static`` or ``/docs-assets``) is labelled by the route or mount that
    serves it; only a request that nothing serves is ``<unmatched>``."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def route_label(self, scope: Scope, original: Scope) -> str:
        if isinstance(scope.get("route_label"), str):  # set by a middleware that answered before routing
            return str(scope["route_label"])
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str) and path:
            return path
        for candidate in self.routes:
            match, _ = candidate.matches(original)
            if match is Match.FULL:
                return str(getattr(candidate, "path", "")) or "<unmatched>"
        return "<unmatched>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if b"referrer-policy" not in names:
                    headers.append((b"referrer-policy", b"no-referrer"))
                message["headers"] = headers
            await send(message)

        # Routing rewrites parts of the scope (a mount's root_path): match against a copy.
        original: Scope = {k: scope.get(k) for k in ("type", "path", "root_path", "method")}
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            label = self.route_label(scope, original)
            self.metrics.requests.labels(label, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, but a refused preflight answers JSON like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 400:
            text = bytes(response.body).decode("utf-8", errors="replace")
            headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
            return error_response(
                400,
                "cors_rejected",
                f"{text}: this server allows cross-origin calls only from "
                "the origins, methods and headers it is configured with",
                headers,
            )
        return response


def create_app(settings: Settings | None = None, model: CaptionerBase | None = None) -> FastAPI:
    """Build the app. Without ``model`` the checkpoint named by ``settings`` is loaded at
    startup (in a worker thread); a load error stops the server from starting."""
    settings = settings or settings_from_environment()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = model
        if loaded is None:
            loaded = await anyio.to_thread.run_sync(load_model, settings)
        service = CaptionService(loaded, settings, metrics)
        service.start()
        backend = str(loaded.runtime_status()["encoder"])  # onnxruntime, or pytorch on CUDA
        metrics.model_info.labels(loaded.model_id, loaded.encoder_name, str(loaded.device), backend).set(1)
        app.state.service = service
        log.info("model %s ready on %s", loaded.model_id, loaded.device)
        try:
            yield
        finally:
            # uvicorn has stopped accepting connections and waited for in-flight requests;
            # run whatever is still queued, then release the threads.
            await anyio.to_thread.run_sync(service.stop, settings.request_timeout_s)

    app = FastAPI(
        title="captioner",
        version=__version__,
        summary="Caption images over HTTP: a CNN encoder feeding a recurrent decoder, with dynamic batching.",
        description="POST images to `/v1/captions` (multipart `file` parts, or one image as the raw "
        "`image/*` body). Every option is checked: out of range, not a plain ASCII number, or an unknown "
        "query parameter is a 422 that says what is allowed. "
        'Every error is JSON `{"error": code, "detail": text}`. See docs/service.md.',
        lifespan=lifespan,
        docs_url=None,  # served below from the bundled Swagger UI: no CDN, works offline
        redoc_url=None,  # FastAPI's ReDoc page would load its script from a CDN
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.client_limits = ClientLimits(settings.max_client_pixels, settings.max_client_buffered_bytes)
    install_error_handlers(app)
    app.include_router(page.router)
    app.include_router(captions.build_router(settings))
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    install_offline_docs(app)
    app.add_middleware(AdmissionMiddleware)  # queue and buffered-bytes checks before a body is read
    if settings.cors_origins:
        app.add_middleware(
            JSONCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, routes=app.router.routes)
    return app


def install_offline_docs(app: FastAPI) -> None:
    """/docs with Swagger UI 5 (it reads the OpenAPI 3.1 document FastAPI writes), its script
    and stylesheet served from the ``fastapi-offline`` package: no CDN, works offline."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).resolve().parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="captioner API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )


def load_model(settings: Settings) -> CaptionerBase:
    """The checkpoint named by the settings (None: the shipped default weights): from its
    graphs on ONNX Runtime, or on CUDA through the PyTorch reference path."""
    threads = settings.threads or settings.torch_threads
    if settings.torch_threads and not settings.threads:
        log.warning("CAPTIONER_TORCH_THREADS / --torch-threads is deprecated: use CAPTIONER_THREADS / --threads")
    return load_captioner(settings.checkpoint, settings.device, settings.precision, threads)
