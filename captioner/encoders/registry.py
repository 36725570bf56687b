"""The encoder registry: named CNN backbones with their preprocessing, facts and weights.

Modelled on torchvision's weight enums: an :class:`EncoderSpec` is everything we know about
one backbone (feature size, the preprocessing its weights were trained with, where the
weights come from and under which licence, ImageNet accuracy) plus how to build it. The
registry maps names to specs; :func:`build_encoder` turns a name into a ready
:class:`Encoder` (pooled features, classifier removed, eval mode, frozen).

Weights are never downloaded. ``weights`` is one of

* ``"pretrained"``: the backbone's published ImageNet weights, from wherever this machine
  already has them (an installed package, the torch hub cache); a clear error otherwise;
* ``"random"``: fresh random initialisation (tests, training from scratch);
* a path to a state-dict file (``.safetensors``, or a ``.pt``/``.pth`` read with
  ``torch.load(weights_only=True)``), in the backbone's original layout (head keys are
  dropped) or our own;
* a state dict already in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CaptionerError
from ..runtime.preprocess import Preprocess

StateDict = dict[str, torch.Tensor]
WeightsArg = str | os.PathLike | Mapping[str, torch.Tensor]

DEFAULT_ENCODER = "efficientnet_lite0"


class UnknownEncoderError(CaptionerError):
    """An encoder name that is not in the registry."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown encoder {name!r}; known encoders: {', '.join(known)}")


class EncoderWeightsError(CaptionerError):
    """Weights for an encoder are missing, unreadable, or do not fit the architecture."""


@dataclass(frozen=True)
class EncoderSpec:
    """One backbone: what it outputs, how to feed it, where its weights come from.

    ``build(with_classifier)`` makes the network with random weights: without the
    classifier it maps (B, 3, H, W) -> (B, feature_dim) pooled features; with it,
    (B, 3, H, W) -> (B, 1000) ImageNet logits. ``pretrained_file()`` returns the path of
    the published weights on this machine or raises :class:`EncoderWeightsError` saying
    how to provide them. ``adapt_state(state, with_classifier)`` renames/filters a state
    dict in the backbone's original layout (or ours) into the keys ``build`` expects;
    name and shape checks happen afterwards in :func:`load_weights`.
    """

    name: str
    feature_dim: int
    preprocess: Preprocess
    description: str
    weights_source: str  # where the pretrained weights come from
    weights_license: str
    build: Callable[[bool], nn.Module] = field(repr=False, compare=False)
    pretrained_file: Callable[[], Path] = field(repr=False, compare=False)
    adapt_state: Callable[[StateDict, bool], StateDict] = field(repr=False, compare=False)
    imagenet_top1: float | None = None  # % top-1 on ImageNet-1k val, as published
    num_params: int | None = None  # parameters of the full classifier
    notes: str = ""
    # Attribute of build(True)'s network that maps the pooled features (B, F) to the ImageNet
    # logits (B, 1000); None when the classifier is not a head on the pooled features.
    classifier_head: str | None = None
    # The map before pooling: (trunk, images (B, 3, H, W)) -> (B, F, h, w); None when the
    # backbone cannot give one. Its spatial mean is the pooled feature.
    feature_map: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = field(
        default=None, repr=False, compare=False
    )
    stride: int = 32  # input pixels per feature-map cell

    @property
    def grid(self) -> tuple[int, int] | None:
        """(h, w) of the feature map at the preprocessing's input size (7 x 7 at 224 px)."""
        if self.feature_map is None:
            return None
        side = -(-self.preprocess.crop_size // self.stride)  # ceil: 'SAME' padding and ResNets agree
        return side, side

    def facts(self) -> dict[str, object]:
        """JSON-ready summary (for `captioner encoders`, checkpoints, the service's /info)."""
        return {
            "name": self.name,
            "feature_dim": self.feature_dim,
            "description": self.description,
            "preprocess": self.preprocess.to_dict(),
            "weights_source": self.weights_source,
            "weights_license": self.weights_license,
            "imagenet_top1": self.imagenet_top1,
            "num_params": self.num_params,
            "notes": self.notes,
            "labels": self.classifier_head is not None,
            "grid": list(self.grid) if self.grid is not None else None,  # feature map (h, w); N = h * w
        }


class Encoder(nn.Module):
    """A CNN trunk with its classifier removed: (B, 3, H, W) normalised images -> (B, F).

    Built by :func:`build_encoder` in eval mode with ``requires_grad=False`` (a frozen
    feature extractor); call ``.train()`` and ``.requires_grad_(True)`` to fine-tune it.
    """

    def __init__(self, trunk: nn.Module, spec: EncoderSpec) -> None:
        super().__init__()
        self.trunk = trunk
        self.spec = spec
        self.feature_dim = spec.feature_dim

    spatial = False  # True for SpatialEncoder: (B, N, F) maps instead of (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)  # (B, 3, H, W) -> (B, F)

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, feature_dim={self.feature_dim}"


class SpatialEncoder(Encoder):
    """The same trunk, stopped before the pooling: (B, 3, H, W) -> (B, N, F) with N = h * w
    locations in row-major order (row 0 is the top of the image). The mean over N is the
    pooled feature of :class:`Encoder`. What an attention decoder reads."""

    spatial = True

    def __init__(self, trunk: nn.Module, spec: EncoderSpec) -> None:
        if spec.feature_map is None:
            raise EncoderWeightsError(f"encoder {spec.name!r} cannot give a spatial feature map")
        super().__init__(trunk, spec)
        self._feature_map = spec.feature_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self._feature_map(self.trunk, x)  # (B, F, h, w)
        return fmap.flatten(2).transpose(1, 2)  # (B, N, F)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", spatial=True"


def pooled(features: torch.Tensor) -> torch.Tensor:
    """Pooled features (B, F) of either kind of encoder output: (B, F) as is, the spatial
    mean of maps (B, N, F) (what the global average pool gives), in float32."""
    return features.mean(dim=1, dtype=torch.float32) if features.dim() == 3 else features.float()  # (B, F)


# ---------------------------------------------------------------------- the registry
_REGISTRY: dict[str, EncoderSpec] = {}


def register(spec: EncoderSpec) -> EncoderSpec:
    """Add a backbone to the registry (each backbone module registers its own specs)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_encoders() -> list[str]:
    """Registered encoder names, the default first, then in registration order."""
    return sorted(_REGISTRY, key=lambda n: n != DEFAULT_ENCODER)  # sorted() is stable


def get_spec(name: str) -> EncoderSpec:
    """The spec registered under ``name``; raises :class:`UnknownEncoderError` otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownEncoderError(str(name), list_encoders()) from None


# ---------------------------------------------------------------------- building
def build_encoder(name: str = DEFAULT_ENCODER, weights: WeightsArg = "pretrained", spatial: bool = False) -> Encoder:
    """Build the named encoder with the requested weights, frozen and in eval mode.

    ``weights``: ``"pretrained"``, ``"random"``, a path to a state-dict file, or a state
    dict (see the module docstring). ``spatial=True`` returns the feature map before pooling,
    (B, N, F) (a :class:`SpatialEncoder`; the spec's ``grid`` gives h x w = N). Raises
    :class:`UnknownEncoderError` for an unknown name and :class:`EncoderWeightsError` when
    the weights are missing or do not fit.
    """
    spec = get_spec(name)
    trunk = spec.build(False)
    if not (isinstance(weights, str) and weights == "random"):
        state, source = _resolve_weights(spec, weights)
        load_weights(trunk, spec.adapt_state(_strip_prefix(state, "trunk."), False), source)
    encoder = SpatialEncoder(trunk, spec) if spatial else Encoder(trunk, spec)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def build_classifier(name: str = DEFAULT_ENCODER, weights: WeightsArg = "pretrained") -> nn.Module:
    """The same backbone with its ImageNet classifier kept: (B, 3, H, W) -> (B, 1000) logits.

    Not used for captioning; it is how we check that a backbone's weights and
    preprocessing are right (a photo of a cat must come out as a cat).
    """
    spec = get_spec(name)
    model = spec.build(True)
    if not (isinstance(weights, str) and weights == "random"):
        state, source = _resolve_weights(spec, weights)
        load_weights(model, spec.adapt_state(state, True), source)
    model.eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------- weights
def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a state dict from disk without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A dict that wraps the weights under ``state_dict``
    or ``model`` (a common training-checkpoint layout) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"{path}: encoder weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code in it, wrong format, ...
        raise EncoderWeightsError(
            f"{path}: cannot read encoder weights ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "expected a state dict saved with torch.save(model.state_dict(), ...) or safetensors"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]  # a training checkpoint that wraps the weights
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderWeightsError(f"{path}: not a state dict (a mapping from parameter names to tensors)")
    return dict(obj)


def load_weights(model: nn.Module, state: StateDict, source: str) -> None:
    """Load ``state`` into ``model`` after checking that every name and shape lines up.

    Anything missing, unexpected or mis-shaped is reported by name (the first few of
    each) together with ``source``, instead of a half-loaded model.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:

        def show(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [
            f"{len(x)} {what}: {show(x)}"
            for what, x in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if x
        ]
        raise EncoderWeightsError(f"{source}: weights do not fit this architecture; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _resolve_weights(spec: EncoderSpec, weights: WeightsArg) -> tuple[StateDict, str]:
    """(state dict, a description of where it came from) for any accepted ``weights``."""
    if isinstance(weights, Mapping):
        return dict(weights), f"{spec.name} state dict"
    if isinstance(weights, str) and weights == "pretrained":
        path = spec.pretrained_file()
        return read_state_dict(path), str(path)
    if isinstance(weights, (str, os.PathLike)):
        return read_state_dict(weights), str(weights)
    raise TypeError(f"weights must be 'pretrained', 'random', a path or a state dict, not {type(weights).__name__}")


def _strip_prefix(state: StateDict, prefix: str) -> StateDict:
    """Accept an :class:`Encoder`'s own state dict (keys ``trunk.*``) as well as a bare trunk's."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state
