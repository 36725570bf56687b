"""Image captioning: a pretrained CNN feeding an LSTM decoder ("Show and Tell" family).

The public names below are imported on first use, so ``import captioner`` (and the
``captioner`` command's ``--help`` and argument errors) stay fast. ``Captioner`` is the
torch-free runtime (:mod:`captioner.runtime`); ``ReferenceCaptioner``, the decoders and
training are the torch side (``pip install 'captioner[train]'``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import CaptionerError, CheckpointError, ImageLoadError

if TYPE_CHECKING:  # pragma: no cover
    from .decoder import CaptionDecoder, DecoderConfig
    from .images import load_image
    from .model import ReferenceCaptioner
    from .runtime.captioner import Captioner
    from .runtime.results import CaptionResult
    from .vocab import Vocabulary, tokenize

__version__ = "0.1.0"

__all__ = [
    "CaptionDecoder",
    "CaptionResult",
    "Captioner",
    "CaptionerError",
    "CheckpointError",
    "DecoderConfig",
    "ImageLoadError",
    "ReferenceCaptioner",
    "Vocabulary",
    "__version__",
    "load_image",
    "tokenize",
]

_LAZY = {
    "CaptionDecoder": ".decoder",
    "DecoderConfig": ".decoder",
    "load_image": ".images",
    "Captioner": ".runtime.captioner",
    "CaptionResult": ".runtime.results",
    "ReferenceCaptioner": ".model",
    "Vocabulary": ".vocab",
    "tokenize": ".vocab",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'captioner' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
