"""The FastAPI application: ``create_app(settings, model)``.

Shared resources live on ``app.state``: ``settings`` (:class:`Settings`), ``metrics``
(:class:`Metrics`, its own Prometheus registry) and ``service`` (:class:`CaptionService`:
the model, the decode pool and the batcher). Routers stay thin and read them from there.

Run it with ``captioner serve`` (recommended: loads the model first, prints where to
point a browser, drains on SIGTERM), or with plain uvicorn:
``uvicorn --factory service.app:create_app`` (settings from the ``CAPTIONER_*`` environment).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner import Captioner, __version__

from .captioning import CaptionService
from .errors import error_response, install_error_handlers
from .metrics import Metrics
from .routers import captions, health, page
from .settings import Settings

log = logging.getLogger("service")


class ObservabilityMiddleware:
    """Counts and times every HTTP request by route template (``/v1/captions``, never the raw
    path, so unknown URLs cannot blow up the label set) and adds safety headers."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or (
                "/static" if scope.get("path", "").startswith("/static/") else "<unmatched>"
            )
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


def create_app(settings: Settings | None = None, model: Captioner | None = None) -> FastAPI:
    """Build the app. Without ``model`` the checkpoint named by ``settings`` is loaded at
    startup (in a worker thread); a load error stops the server from starting."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = model
        if loaded is None:
            loaded = await anyio.to_thread.run_sync(load_model, settings)
        service = CaptionService(loaded, settings, metrics)
        service.start()
        backend = str(getattr(loaded, "encoder_backend", "pytorch"))  # onnxruntime on the fast CPU path
        metrics.model_info.labels(loaded.model_id, loaded.encoder.spec.name, str(loaded.device), backend).set(1)
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
        description="POST images to `/v1/captions` (multipart `file` parts or a raw `image/*` body). "
        'Every error is JSON `{"error": code, "detail": text}`. See docs/service.md.',
        lifespan=lifespan,
        docs_url=None,  # served below from the bundled Swagger UI: no CDN, works offline
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(page.router)
    app.include_router(captions.router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    install_offline_docs(app)
    if settings.cors_origins:
        app.add_middleware(
            JSONCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app


def install_offline_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's script and stylesheet from the ``swagger-ui-bundle`` package,
    so the API reference renders on machines without internet access."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="captioner API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def load_model(settings: Settings) -> Captioner:
    """The checkpoint named by the settings (None: the shipped default weights), with the
    configured torch thread count."""
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    return Captioner.load(settings.checkpoint, device=settings.device)
