"""Image captioning: a pretrained CNN feeding an LSTM decoder ("Show and Tell" family)."""

from .decoder import CaptionDecoder, DecoderConfig
from .errors import CaptionerError, CheckpointError, ImageLoadError
from .images import load_image
from .model import Captioner, CaptionResult
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
    "Vocabulary",
    "__version__",
    "load_image",
    "tokenize",
]
