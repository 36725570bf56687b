"""The HTTP captioning service: FastAPI app, dynamic batching, limits, metrics, upload page.

    from captioner.service import Settings, create_app
    app = create_app(Settings(checkpoint="runs/scenes/best"))

or from the command line: ``captioner serve``. See docs/service.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .settings import Settings

__all__ = ["Settings", "create_app"]
_WHERE = {"Settings": ".settings", "create_app": ".app"}


def __getattr__(name: str) -> Any:  # imported on first use: `captioner --help` stays free of torch
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
