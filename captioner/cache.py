"""Where caches live and what names their entries, one definition for the whole project.

* :func:`default_cache_dir`: the root of every cache (graphs exported for checkpoints that
  carry none under ``graphs/``, training's feature cache under ``features/``).
* :func:`captioner.model.digest.weights_digest` (torch side): a digest of a module's
  weights; the name of anything derived from them (a file of cached features).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "LEGACY_CACHE_ENV", "default_cache_dir"]

CACHE_ENV = "CAPTIONER_CACHE_DIR"
LEGACY_CACHE_ENV = "CAPTIONER_CACHE"  # the older name, still read


def default_cache_dir() -> Path:
    """``$CAPTIONER_CACHE_DIR``, else ``$CAPTIONER_CACHE``, else ``$XDG_CACHE_HOME/captioner``,
    else ``~/.cache/captioner``."""
    env = os.environ.get(CACHE_ENV) or os.environ.get(LEGACY_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "captioner"
