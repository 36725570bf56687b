"""Where caches live and what names their entries, one definition for the whole project.

* :func:`default_cache_dir`: the root of every cache (exported ONNX graphs under ``onnx/``,
  training's feature cache under ``features/``).
* :func:`weights_digest`: a digest of a module's weights; the name of anything derived
  from them (an exported graph, a file of cached features).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["CACHE_ENV", "LEGACY_CACHE_ENV", "default_cache_dir", "weights_digest"]

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


def weights_digest(module: nn.Module, extra: str = "") -> str:
    """SHA-256 (hex) over every tensor of ``module.state_dict()`` in name order (name, shape,
    dtype, bytes), after ``extra`` (what else the derived thing depends on, e.g. tool
    versions). It identifies the weights whatever file or download they came from."""
    h = hashlib.sha256(extra.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
