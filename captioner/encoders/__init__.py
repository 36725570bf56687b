"""CNN encoders: backbones with their classifier removed, their preprocessing and weights.

    from captioner.encoders import build_encoder, get_spec, list_encoders

    encoder = build_encoder("efficientnet_lite0")          # frozen, eval mode, ImageNet weights
    x = encoder.spec.preprocess.batch(pil_images)          # (B, 3, 224, 224)
    features = encoder(x)                                  # (B, 1280)
    spatial = build_encoder("efficientnet_lite0", spatial=True)
    maps = spatial(x)                                      # (B, 49, 1280): the 7 x 7 map, row-major

``list_encoders()`` names every registered backbone; ``get_spec(name)`` tells its feature
size, preprocessing, weights source/licence and ImageNet accuracy without building it.
``build_label_head(name)`` is the backbone's own ImageNet classifier on those features:
``head.top_k(features, 5)`` names what the CNN sees (see :mod:`captioner.encoders.labels`).
"""

# Importing the backbone modules registers their specs.
from ..runtime.preprocess import INTERPOLATIONS, Preprocess
from . import efficientnet_lite as _efficientnet_lite  # noqa: F401
from . import torchvision_backbones as _torchvision_backbones  # noqa: F401
from .labels import Label, LabelHead, build_label_head, has_labels, imagenet_classes
from .registry import (
    DEFAULT_ENCODER,
    Encoder,
    EncoderSpec,
    EncoderWeightsError,
    SpatialEncoder,
    UnknownEncoderError,
    build_classifier,
    build_encoder,
    get_spec,
    list_encoders,
    load_weights,
    pooled,
    read_state_dict,
    register,
)

__all__ = [
    "DEFAULT_ENCODER",
    "INTERPOLATIONS",
    "Encoder",
    "EncoderSpec",
    "EncoderWeightsError",
    "Label",
    "LabelHead",
    "Preprocess",
    "SpatialEncoder",
    "UnknownEncoderError",
    "build_classifier",
    "build_encoder",
    "build_label_head",
    "get_spec",
    "has_labels",
    "imagenet_classes",
    "list_encoders",
    "load_weights",
    "pooled",
    "read_state_dict",
    "register",
]
