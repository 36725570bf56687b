"""What the backbone sees: its own ImageNet classes, from the features the captioner uses.

Every registered backbone's ImageNet classifier is a head on the pooled features (the
spec's ``classifier_head``), so the labels cost one small matrix product on the features
the decoder already gets, whichever runtime (PyTorch or ONNX Runtime) made them::

    head = build_label_head("efficientnet_lite0")      # the published classifier weights
    head.top_k(features, 5)                            # [[Label("tabby", 0.42), ...], ...]

Class names are torchvision's bundled ImageNet-1k metadata (the list its weights enums
carry as ``meta["categories"]``); nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

from ..runtime.results import MAX_LABELS, Label
from .registry import EncoderWeightsError, WeightsArg, _resolve_weights, get_spec, load_weights

IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in the classifiers' order (torchvision's metadata)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    names = tuple(str(n) for n in _IMAGENET_CATEGORIES)
    if len(names) != IMAGENET_CLASSES:
        raise EncoderWeightsError(f"torchvision's ImageNet metadata has {len(names)} classes, expected 1000")
    return names


def has_labels(encoder_name: str) -> bool:
    """Whether the named backbone's published weights include an ImageNet classifier."""
    return get_spec(encoder_name).classifier_head is not None


class LabelHead(nn.Module):
    """A backbone's ImageNet classifier as a head on pooled features: (B, F) -> (B, 1000)."""

    def __init__(self, head: nn.Module, encoder_name: str) -> None:
        super().__init__()
        self.head = head
        self.encoder_name = encoder_name
        self.classes = imagenet_classes()

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features)  # (B, F) -> (B, 1000) logits

    @torch.inference_mode()
    def top_k(self, features: Tensor, k: int) -> list[list[Label]]:
        """The ``k`` most probable classes of each row of ``features`` (B, F), best first."""
        if not 1 <= int(k) <= MAX_LABELS:
            raise ValueError(f"labels must be an integer from 1 to {MAX_LABELS}")
        param = next(self.head.parameters())
        probs = torch.softmax(self(features.to(param.device, param.dtype)).float(), dim=-1)  # (B, 1000)
        top = probs.topk(int(k), dim=-1)
        return [
            [Label(self.classes[i], float(p)) for i, p in zip(idx, ps)]
            for idx, ps in zip(top.indices.tolist(), top.values.tolist())
        ]


def build_label_head(encoder_name: str, weights: WeightsArg = "pretrained") -> LabelHead:
    """The named backbone's ImageNet classifier head, in eval mode and frozen.

    ``weights`` as for :func:`~captioner.encoders.build_encoder` (the full classifier's
    state dict: the head's keys are taken from it). Raises :class:`EncoderWeightsError` when
    the backbone has no classifier head or its weights are missing or do not fit.
    """
    spec = get_spec(encoder_name)
    if spec.classifier_head is None:
        raise EncoderWeightsError(f"encoder {spec.name!r} has no ImageNet classifier to give labels")
    with torch.device("meta"):  # shapes only: the trunk is never allocated
        meta_head = getattr(spec.build(True), spec.classifier_head)
    head = meta_head.to_empty(device="cpu")
    for module in head.modules():  # fresh values for "random"; overwritten below otherwise
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    if not (isinstance(weights, str) and weights == "random"):
        state, source = _resolve_weights(spec, weights)
        prefix = spec.classifier_head + "."
        full = spec.adapt_state(state, True)
        own = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
        if not own:
            raise EncoderWeightsError(f"{source}: no '{spec.classifier_head}' classifier weights for labels")
        load_weights(head, own, source)
    out = LabelHead(head, spec.name)
    out.eval()
    out.requires_grad_(False)
    return out
