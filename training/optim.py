"""What the optimiser trains and how: the trained module, AdamW, the learning-rate schedule,
and the seeds.

The loss of a step is the summed token cross-entropy (``CaptionDecoder.loss``) divided by
the number of target tokens in the *global* batch, so N processes of batch B/N compute the
update one process of batch B does. The learning rate is a pure function of the step
(linear warm-up, then cosine decay or constant), so a resumed run needs only the step.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import Tensor, nn

from captioner.decoder import CaptionDecoder

from .config import TrainConfig


class TrainingModel(nn.Module):
    """What the optimiser trains: the decoder, plus the encoder when fine-tuning.

    ``forward(x, tokens)`` takes cached features (B, F) or, with an encoder, images
    (B, 3, H, W), and returns the summed teacher-forced token loss (a scalar).
    """

    def __init__(self, decoder: CaptionDecoder, encoder: nn.Module | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder
        self.label_smoothing = label_smoothing

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        feats = self.encoder(x) if self.encoder is not None else x  # (B, F)
        return self.decoder.loss(feats, tokens, label_smoothing=self.label_smoothing, reduction="sum")  # ()

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def encoder_units(encoder: nn.Module) -> list[nn.Module]:
    """The CNN's layers in forward order, with ``nn.Sequential`` stages opened into blocks."""
    root = getattr(encoder, "trunk", encoder)
    units: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, nn.Sequential) and len(child) > 1:
                walk(child)
            elif any(True for _ in child.parameters()):
                units.append(child)

    walk(root)
    return units


def set_trainable_encoder(encoder: nn.Module, mode: str, blocks: int) -> list[nn.Parameter]:
    """Unfreeze all of the CNN or its last ``blocks`` units; returns the trainable parameters.

    Batch-norm statistics stay frozen (the encoder stays in eval mode): small caption
    batches would give noisy statistics and wreck the pretrained features.
    """
    encoder.requires_grad_(False)
    units = encoder_units(encoder)[-blocks:] if mode == "last" else [encoder]
    for u in units:
        u.requires_grad_(True)
    return [p for p in encoder.parameters() if p.requires_grad]


def build_optimizer(decoder: nn.Module, encoder_params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices only (not biases, norms); the CNN at its own LR."""
    decay = [p for p in decoder.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in decoder.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": cfg.lr},
    ]
    if encoder_params:
        groups.append({"params": encoder_params, "weight_decay": cfg.weight_decay, "base_lr": cfg.encoder_lr})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


#: The warm-up takes at most this share of a run's steps: with little data (20 steps in all)
#: the default 100 warm-up steps would still be raising the learning rate at the last step.
WARMUP_MAX_SHARE = 0.1


def warmup_steps(total: int, cfg: TrainConfig) -> int:
    """The warm-up of a run of ``total`` steps: ``cfg.warmup_steps``, capped at
    :data:`WARMUP_MAX_SHARE` of the run."""
    return min(cfg.warmup_steps, int(WARMUP_MAX_SHARE * total))


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    warm = warmup_steps(total, cfg)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every parameter group at its base learning rate times ``factor``."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed (dropout masks) of one epoch on one process."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63
