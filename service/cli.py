"""``captioner serve``: the HTTP service on the command line.

Registered through the ``captioner.commands`` entry point (``serve = "captioner.service.cli:register"``).
Every flag overrides the matching ``CAPTIONER_*`` environment variable; unset flags leave
the environment (or the default) in charge.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from captioner.errors import CaptionerError

if TYPE_CHECKING:
    from .settings import Settings

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


#: The flags' groups in ``--help``, by setting name; a setting in no group still gets its flag,
#: under "other settings" (a test checks that every setting has one).
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "where to listen": ("host", "port"),
    "model": ("checkpoint", "device", "threads", "torch_threads"),
    "batching": ("max_batch_size", "max_wait_ms", "lanes", "queue_size", "decode_workers", "decode_in"),
    "limits": (
        "max_files",
        "max_body_bytes",
        "max_pixels",
        "request_timeout_s",
        "body_timeout_s",
        "max_buffered_bytes",
        "max_client_buffered_bytes",
        "min_upload_bytes_per_s",
        "max_request_pixels",
        "max_client_pixels",
        "max_header_bytes",
        "header_timeout_s",
        "max_connections",
        "write_timeout_s",
        "max_beam_size",
        "max_length_limit",
        "default_beam_size",
    ),
    "security and lifecycle": ("api_key", "cors_origins", "drain_seconds", "log_level"),
}
#: Flag names and metavars where the setting's own name would read badly.
FLAG_NAMES = {"cors_origins": "--cors-origin", "decode_workers": "--workers"}
#: Old spellings, hidden from --help: each still sets its setting for a release, with a one-line
#: note on stderr (captioner.cli_names). A setting listed here has no flag of its own.
OLD_FLAGS = {"decode_workers": "--decode-workers", "torch_threads": "--torch-threads"}
DEPRECATED_SETTINGS = {"torch_threads": "--threads"}
SHORT_FLAGS = {"checkpoint": "-c"}
METAVARS = {
    "port": "PORT",
    "checkpoint": "DIR",
    "api_key": "KEY",
    "cors_origins": "ORIGIN",
    "max_body_bytes": "BYTES",
    "max_buffered_bytes": "BYTES",
    "max_client_buffered_bytes": "BYTES",
    "min_upload_bytes_per_s": "BYTES",
    "max_header_bytes": "BYTES",
    "max_wait_ms": "MS",
    "drain_seconds": "S",
    "max_beam_size": "K",
    "default_beam_size": "K",
}
HELP_NOTES = {
    "api_key": "prefer the environment variable: flags are visible to other users of the machine",
    "cors_origins": "repeat the flag for several; the variable is comma-separated",
    "threads": "with several replicas on one machine give each cores/replicas",
}


def flag_name(name: str) -> str:
    """``max_batch_size`` -> ``--max-batch-size``; ``*_timeout_s`` -> ``--*-timeout`` (the help says seconds)."""
    if name in FLAG_NAMES:
        return FLAG_NAMES[name]
    return "--" + name.removesuffix("_s" if name.endswith("_timeout_s") else "").replace("_", "-")


def _shown_default(value: object) -> str | None:
    if value is None or (isinstance(value, list) and not value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_setting_flag(group: argparse._ArgumentGroup, name: str) -> None:
    """One flag from one :class:`Settings` field: its type, default and description."""
    from .settings import DECODE_IN, LOG_LEVELS, Settings

    field = Settings.model_fields[name]
    annotation = str(field.annotation)
    default = None if field.default_factory is not None else field.default
    shown = _shown_default(default)
    notes = [f"env CAPTIONER_{name.upper()}"] + ([f"default {shown}"] if shown else [])
    help_text = f"{field.description} ({'; '.join(notes)})"
    if name in HELP_NOTES:
        help_text += f"; {HELP_NOTES[name]}"
    kwargs: dict[str, object] = {"dest": name, "help": help_text.replace("%", "%%")}
    if "list" in annotation:
        kwargs["action"] = "append"
    elif name == "log_level":
        kwargs["choices"] = LOG_LEVELS
    elif name == "decode_in":
        kwargs["choices"] = DECODE_IN
    else:
        kwargs["type"] = float if "float" in annotation else int if "int" in annotation else str
    if name not in ("log_level", "decode_in"):
        numeric = kwargs["type"] in (int, float) if "type" in kwargs else False
        kwargs["metavar"] = METAVARS.get(name, "S" if name.endswith("_s") else "N" if numeric else name.upper())
    flags = [flag_name(name)] + ([SHORT_FLAGS[name]] if name in SHORT_FLAGS else [])
    if name not in DEPRECATED_SETTINGS:
        group.add_argument(*flags, **kwargs)  # type: ignore[arg-type]
    if name in OLD_FLAGS:
        from captioner.cli_names import add_deprecated

        new = DEPRECATED_SETTINGS.get(name, flags[0])
        add_deprecated(group, OLD_FLAGS[name], new, **{k: v for k, v in kwargs.items() if k != "help"})


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` verb to the ``captioner`` command line, one flag per setting."""
    p = subparsers.add_parser(
        "serve",
        help="start the HTTP captioning service (upload page, JSON API, metrics)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .settings import Settings

    grouped = {name for names in FLAG_GROUPS.values() for name in names}
    others = tuple(name for name in Settings.model_fields if name not in grouped)
    for title, names in {**FLAG_GROUPS, "other settings": others}.items():
        if not names:
            continue
        group = p.add_argument_group(title)
        for name in names:
            _add_setting_flag(group, name)
    p.set_defaults(func=cmd_serve)


class SettingsError(CaptionerError):
    """The flags or ``CAPTIONER_*`` variables do not make valid settings (a usage error: exit 2)."""


def allowed_range(name: str) -> str | None:
    """The range a numeric setting allows, in words (``from 1 to 1024``), from its Field bounds."""
    from .settings import Settings

    bounds: dict[str, float] = {}
    for item in Settings.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(item, key, None) is not None:
                bounds[key] = getattr(item, key)
    low = f"from {bounds['ge']:g}" if "ge" in bounds else (f"greater than {bounds['gt']:g}" if "gt" in bounds else "")
    high = f"to {bounds['le']:g}" if "le" in bounds else (f"below {bounds['lt']:g}" if "lt" in bounds else "")
    if not low and not high:
        return None
    if low and not high:
        return low.replace("from", "at least", 1)
    return f"{low} {high}".strip()


def _problem(err: dict) -> str:
    """One validation error in the words of the setting, its flag and its variable."""
    loc = [str(p) for p in err.get("loc", ())]
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:
        return msg
    name = loc[0]
    where = f"{name} ({flag_name(name)}, CAPTIONER_{name.upper()})"
    allowed = allowed_range(name) if name in _model_fields() else None
    if allowed and str(err.get("type", "")).startswith(("greater_than", "less_than")):
        return f"{where} must be {allowed}, got {err.get('input')}"
    return f"{where}: {msg}"


def _model_fields() -> dict[str, object]:
    from .settings import Settings

    return dict(Settings.model_fields)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    from pydantic import ValidationError

    from .settings import Settings

    overrides = {k: getattr(args, k) for k in Settings.model_fields if getattr(args, k, None) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = "; ".join(_problem(dict(err)) for err in e.errors())
        raise SettingsError(f"invalid service settings: {problems}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, bind the port, print where to go, serve until SIGTERM/SIGINT.
    Invalid settings: one line on stderr and exit status 2, before anything is loaded."""
    try:
        settings = settings_from_args(args)
    except SettingsError as e:
        print(f"captioner serve: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(levelname)s:     %(name)s: %(message)s",
    )
    from .app import create_app, load_model
    from .server import bind_socket, serve

    sock = bind_socket(settings.host, settings.port)  # a port in use is said at once, not after loading
    try:
        print(
            f"captioner serve: loading {settings.checkpoint or 'the default weights'} ...", file=sys.stderr, flush=True
        )
        model = load_model(settings)
    except BaseException:
        sock.close()
        raise
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
