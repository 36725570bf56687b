"""``captioner serve``: the HTTP service on the command line.

Registered through the ``captioner.commands`` entry point (``serve = "captioner.service.cli:register"``).
Every flag overrides the matching ``CAPTIONER_*`` environment variable; unset flags leave
the environment (or the default) in charge.
"""

from __future__ import annotations

import argparse
import logging
import sys

from captioner.errors import CaptionerError

DESCRIPTION = """Start the HTTP captioning service (FastAPI on uvicorn).

Endpoints: the upload page at /, POST /v1/captions, GET /v1/model, /healthz, /readyz,
/metrics (Prometheus) and the OpenAPI docs at /docs. Images of concurrent requests are
batched through the model. Every option can also be set by an environment variable
CAPTIONER_<OPTION> (for example CAPTIONER_MAX_BATCH_SIZE=32, CAPTIONER_API_KEY=secret);
flags win over the environment."""

EPILOG = """examples:
  captioner serve                                   default weights on http://127.0.0.1:8000
  captioner serve --host 0.0.0.0 --port 8080 --checkpoint runs/scenes/best
  CAPTIONER_API_KEY=secret captioner serve          require 'Authorization: Bearer secret'
  curl -F file=@photo.jpg http://127.0.0.1:8000/v1/captions"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` verb to the ``captioner`` command line."""
    p = subparsers.add_parser(
        "serve",
        help="start the HTTP captioning service (upload page, JSON API, metrics)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("where to listen")
    g.add_argument("--host", help="interface to bind; 0.0.0.0 for all (env CAPTIONER_HOST, default 127.0.0.1)")
    g.add_argument("--port", type=int, help="TCP port, 0 for any free one (env CAPTIONER_PORT, default 8000)")

    g = p.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        "-c",
        metavar="DIR",
        help="checkpoint folder (env CAPTIONER_CHECKPOINT; default: the shipped weights)",
    )
    g.add_argument("--device", help="cpu, cuda or cuda:N (env CAPTIONER_DEVICE; default: cuda when available)")
    g.add_argument(
        "--torch-threads",
        type=int,
        metavar="N",
        help="threads torch uses for the model (env CAPTIONER_TORCH_THREADS; default: torch's choice, "
        "one per core; with several replicas on one machine give each cores/replicas)",
    )

    g = p.add_argument_group("batching")
    g.add_argument("--max-batch-size", type=int, metavar="N", help="most images per model run (default 16)")
    g.add_argument(
        "--max-wait-ms",
        type=float,
        metavar="MS",
        help="how long a batch may wait to fill while the model is busy (default 5; an idle model starts at once)",
    )
    g.add_argument(
        "--queue-size",
        type=int,
        metavar="N",
        help="most images accepted and not yet captioned; more gets 503 + Retry-After (default 128)",
    )
    g.add_argument("--decode-workers", type=int, metavar="N", help="threads decoding uploads (default 2)")

    g = p.add_argument_group("limits")
    g.add_argument("--max-files", type=int, metavar="N", help="most images per request (default 16)")
    g.add_argument("--max-body-bytes", type=int, metavar="BYTES", help="largest request body (default 32 MiB)")
    g.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="largest image, width x height, checked before decoding (default 40000000)",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        metavar="S",
        dest="request_timeout_s",
        help="seconds a request may take, queueing included; then 504 (default 30)",
    )
    g.add_argument(
        "--body-timeout",
        type=float,
        metavar="S",
        dest="body_timeout_s",
        help="seconds a client may take to send its request body; then 408 (default 60)",
    )
    g.add_argument("--max-beam-size", type=int, metavar="K", help="largest beam a request may ask for (default 5)")
    g.add_argument(
        "--max-length-limit", type=int, metavar="N", help="largest max_length a request may ask for (default 50)"
    )
    g.add_argument("--default-beam-size", type=int, metavar="K", help="beam size when a request gives none (default 1)")

    g = p.add_argument_group("security and lifecycle")
    g.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (prefer env CAPTIONER_API_KEY: flags are "
        "visible to other users of the machine)",
    )
    g.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="allow browser calls from this origin (repeatable; env CAPTIONER_CORS_ORIGINS, "
        "comma-separated; default: CORS off)",
    )
    g.add_argument(
        "--drain-seconds",
        type=float,
        metavar="S",
        help="after SIGTERM keep serving this long with /readyz at 503 before shutting down (default 0)",
    )
    g.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default info)",
    )
    p.set_defaults(func=cmd_serve)


SETTING_FLAGS = (
    "host",
    "port",
    "checkpoint",
    "device",
    "torch_threads",
    "max_batch_size",
    "max_wait_ms",
    "queue_size",
    "decode_workers",
    "max_files",
    "max_body_bytes",
    "max_pixels",
    "request_timeout_s",
    "body_timeout_s",
    "max_beam_size",
    "max_length_limit",
    "default_beam_size",
    "api_key",
    "cors_origins",
    "drain_seconds",
    "log_level",
)


def settings_from_args(args: argparse.Namespace):
    """Settings from the environment, overridden by the flags that were given."""
    from pydantic import ValidationError

    from .settings import Settings

    overrides = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        raise CaptionerError(
            f"invalid service settings: {problems} (check the flags and CAPTIONER_* variables)"
        ) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, bind the port, print where to go, serve until SIGTERM/SIGINT."""
    settings = settings_from_args(args)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(levelname)s:     %(name)s: %(message)s",
    )
    from .app import create_app, load_model
    from .server import bind_socket, serve

    print(f"captioner serve: loading {settings.checkpoint or 'the default weights'} ...", file=sys.stderr, flush=True)
    model = load_model(settings)
    sock = bind_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = (
        "127.0.0.1"
        if host in ("0.0.0.0", "")
        else ("[::1]" if host == "::" else (f"[{host}]" if ":" in host else host))
    )
    url = f"http://{shown}:{port}"
    auth = " -H 'Authorization: Bearer $CAPTIONER_API_KEY'" if settings.api_key else ""
    print(
        f"captioner serve: model {model.model_id} on {model.device}; listening on {url}\n"
        f"  open {url}/ in a browser to upload images, or:\n"
        f"  curl{auth} -F file=@photo.jpg {url}/v1/captions\n"
        f"  API docs {url}/docs, metrics {url}/metrics; Ctrl+C to stop",
        flush=True,
    )
    app = create_app(settings, model=model)
    try:
        serve(app, settings, sock)
    finally:
        sock.close()
    if getattr(app.state, "service", None) is None:
        raise CaptionerError("the service failed to start; see the log above")
    return 0
