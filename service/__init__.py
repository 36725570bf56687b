"""The HTTP captioning service: FastAPI app, dynamic batching, limits, metrics, upload page.

    from captioner.service import Settings, create_app
    app = create_app(Settings(checkpoint="runs/scenes/best"))

or from the command line: ``captioner serve``. See docs/service.md.
"""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
