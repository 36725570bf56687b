"""torchvision backbones (ResNet-18..152, MobileNetV3-Large, EfficientNet-B0) as encoders.

Each network is torchvision's own, with the classifier replaced by ``nn.Identity`` so the
forward pass ends at the global average pool: (B, 3, H, W) -> (B, F). The preprocessing
and the facts (accuracy, parameter count, weights file) are those of the torchvision
weights enum entry named in the table below. They are written out here so that importing
the registry does not import torchvision (about two seconds); a test compares the table
with ``weights.transforms()`` and ``weights.meta`` so it cannot drift.

Weights are never downloaded: "pretrained" means the file torchvision would have
downloaded is already in the torch hub cache (``torch.hub.get_dir()/checkpoints``), or
the user passes a state-dict file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..runtime.preprocess import Preprocess
from .registry import EncoderSpec, EncoderWeightsError, StateDict, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TorchvisionBackbone:
    """One row of the table: a torchvision builder, its weights entry and what it gives."""

    name: str  # torchvision.models builder, also our encoder name
    weights: str  # torchvision weights enum entry, e.g. "ResNet50_Weights.IMAGENET1K_V2"
    url: str  # where torchvision downloads that entry from
    head: str  # attribute holding the classifier, replaced by nn.Identity
    feature_dim: int  # width of the pooled trunk output
    resize_size: int
    interpolation: str
    imagenet_top1: float
    num_params: int
    description: str  # the architecture, in words

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def cache_path(self) -> Path:
        """Where torchvision keeps the downloaded file (honours $TORCH_HOME at call time)."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def build(self, with_classifier: bool) -> nn.Module:
        import torchvision.models

        model = getattr(torchvision.models, self.name)(weights=None)
        if not with_classifier:
            setattr(model, self.head, nn.Identity())  # forward now ends at the pooled (B, F)
        return model

    def feature_map(self, trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last convolutional map before the global pool (B, F, H/32, W/32)."""
        m: Any = trunk  # a torchvision network: attribute names per architecture
        if self.name.startswith("resnet"):
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))  # (B, 64, H/4, W/4)
            return m.layer4(m.layer3(m.layer2(m.layer1(x))))  # (B, F, H/32, W/32)
        return m.features(x)  # MobileNetV3, EfficientNet: (B, F, H/32, W/32)

    def pretrained_file(self) -> Path:
        path = self.cache_path()
        if not path.is_file():
            raise EncoderWeightsError(
                f"pretrained weights for encoder {self.name!r} ({self.weights}) are not on this machine, "
                f"and this program never downloads them. Either put the file {self.filename} "
                f"(from {self.url}) at {path}, or pass a state-dict file with --encoder-weights PATH "
                f"(torchvision's full {self.name} state dict or one without the '{self.head}' head), "
                "or use random weights (weights='random') to train the encoder from scratch"
            )
        return path

    def adapt_state(self, state: StateDict, with_classifier: bool) -> StateDict:
        """torchvision's layout is ours; without the classifier the head keys are dropped."""
        if with_classifier:
            return dict(state)
        return {k: v for k, v in state.items() if not k.startswith(self.head + ".")}

    def spec(self) -> EncoderSpec:
        enum_name, entry = self.weights.split(".")
        return EncoderSpec(
            name=self.name,
            feature_dim=self.feature_dim,
            preprocess=Preprocess(self.resize_size, 224, IMAGENET_MEAN, IMAGENET_STD, self.interpolation),
            description=(
                f"{self.description} from torchvision, {self.num_params / 1e6:.1f}M params, "
                f"ImageNet top-1 {self.imagenet_top1:.1f}%"
            ),
            weights_source=f"torchvision {enum_name}.{entry} ({self.url}), from the local torch hub cache only",
            weights_license=(
                "published by torchvision (BSD-3-Clause code); the weights were trained on ImageNet-1k, "
                "whose terms may limit use: see torchvision's model documentation"
            ),
            build=self.build,
            pretrained_file=self.pretrained_file,
            adapt_state=self.adapt_state,
            imagenet_top1=self.imagenet_top1,
            num_params=self.num_params,
            notes=f"classifier '{self.head}' removed; features are the global average pool",
            classifier_head=self.head,  # every head in the table starts from the pooled features
            feature_map=self.feature_map,
        )


_TV = "https://download.pytorch.org/models/"
TORCHVISION_BACKBONES: tuple[TorchvisionBackbone, ...] = (
    TorchvisionBackbone(
        "resnet18",
        "ResNet18_Weights.IMAGENET1K_V1",
        _TV + "resnet18-f37072fd.pth",
        "fc",
        512,
        256,
        "bilinear",
        69.758,
        11_689_512,
        "ResNet-18",
    ),
    TorchvisionBackbone(
        "resnet34",
        "ResNet34_Weights.IMAGENET1K_V1",
        _TV + "resnet34-b627a593.pth",
        "fc",
        512,
        256,
        "bilinear",
        73.314,
        21_797_672,
        "ResNet-34",
    ),
    TorchvisionBackbone(
        "resnet50",
        "ResNet50_Weights.IMAGENET1K_V2",
        _TV + "resnet50-11ad3fa6.pth",
        "fc",
        2048,
        232,
        "bilinear",
        80.858,
        25_557_032,
        "ResNet-50",
    ),
    TorchvisionBackbone(
        "resnet101",
        "ResNet101_Weights.IMAGENET1K_V2",
        _TV + "resnet101-cd907fc2.pth",
        "fc",
        2048,
        232,
        "bilinear",
        81.886,
        44_549_160,
        "ResNet-101",
    ),
    TorchvisionBackbone(
        "resnet152",
        "ResNet152_Weights.IMAGENET1K_V2",
        _TV + "resnet152-f82ba261.pth",
        "fc",
        2048,
        232,
        "bilinear",
        82.284,
        60_192_808,
        "ResNet-152",
    ),
    TorchvisionBackbone(
        "mobilenet_v3_large",
        "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        _TV + "mobilenet_v3_large-5c1a4163.pth",
        "classifier",
        960,
        232,
        "bilinear",
        75.274,
        5_483_032,
        "MobileNetV3-Large (pooled 960-d, before the classifier's 1280-d layer)",
    ),
    TorchvisionBackbone(
        "efficientnet_b0",
        "EfficientNet_B0_Weights.IMAGENET1K_V1",
        _TV + "efficientnet_b0_rwightman-7f5810bc.pth",
        "classifier",
        1280,
        256,
        "bicubic",
        77.692,
        5_288_548,
        "EfficientNet-B0 (with SE and swish)",
    ),
)

for _backbone in TORCHVISION_BACKBONES:
    register(_backbone.spec())
