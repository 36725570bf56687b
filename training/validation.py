"""Scoring a model during training: the teacher-forced validation loss, and captions (through
``Captioner.generate``, as served) scored with BLEU-1..4, CIDEr-D and, on a scenes dataset,
the scene accuracy (``captioner.metrics.scene``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from captioner.decoder import CaptionDecoder
from captioner.metrics import score_captions
from captioner.metrics.scene import scene_accuracy
from captioner.model import ReferenceCaptioner

from .splits import Pairs, SplitData, trim_padding


def caption_features(captioner: ReferenceCaptioner, features: Tensor, batch_size: int = 512) -> list[str]:
    """Greedy captions of features (N, F), as the served model writes them (the same search)."""
    captioner.decoder.eval()
    out: list[str] = []
    for i in range(0, features.size(0), batch_size):
        chunk = features[i : i + batch_size].float().cpu().numpy()
        out.extend(r.caption for r in captioner.generate(chunk))
    return out


def caption_metrics(captions: Sequence[str], split: SplitData, metrics: Sequence[str] = ("bleu", "cider")) -> dict:
    """BLEU-1..4, CIDEr-D (and scene accuracy when the split has a ground truth) of captions."""
    preds: dict[Hashable, str] = dict(enumerate(captions))
    refs: dict[Hashable, Sequence[str]] = dict(enumerate(split.captions))
    scores = score_captions(preds, refs, metrics)
    out: dict = {k: float(v) for k, v in scores.items()}
    if split.truth is not None:
        acc = scene_accuracy({split.ids[i]: c for i, c in enumerate(captions)}, split.truth)
        out["scene_accuracy"] = acc.accuracy
        out["scene_errors"] = dict(acc.reasons.most_common())
    return out


@torch.no_grad()
def teacher_forced_loss(
    decoder: CaptionDecoder,
    features: Tensor,
    pairs: Pairs,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 1024,
) -> list[float]:
    """[summed token cross-entropy, number of tokens] over this rank's share of ``pairs``."""
    decoder.eval()
    total, count = 0.0, 0.0
    idx = torch.arange(rank, len(pairs), world)
    for i in range(0, idx.numel(), batch_size):
        b = idx[i : i + batch_size]
        toks = trim_padding(pairs.tokens[b]).to(device)  # (B, T)
        total += decoder.loss(features[pairs.image[b]].to(device), toks, reduction="sum").item()
        count += (toks[:, 1:] != 0).sum().item()
    return [total, count]
