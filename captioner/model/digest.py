"""A digest of a module's weights: the name of anything derived from them."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["weights_digest"]


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
