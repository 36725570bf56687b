"""Where the trainer's image features come from: the feature cache, or (when fine-tuning the
CNN) the images themselves, read and encoded at every step.

Unreadable images are reported by name with the reason; their captions are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captioner.pipeline import Failure, try_prepare

from .config import TrainConfig, default_cache_dir
from .distributed import DistContext
from .splits import SplitData


@dataclass
class CachedInputs:
    """Each split's readable images and their cached features (N, F)."""

    sources: dict[str, SplitData]
    features: dict[str, Tensor]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def cached_inputs(
    cfg: TrainConfig,
    splits: dict[str, SplitData],
    wanted: list[str],
    encoder: nn.Module,
    ctx: DistContext,
    log: Callable[[str], None],
) -> CachedInputs:
    """Run the frozen encoder once per image into the feature cache (rank 0 builds it, the
    other ranks read it) and return each split's features, without the unreadable images."""
    from .features import FeatureCache
    from .int8_features import Int8FeatureEncoder

    int8 = isinstance(encoder, Int8FeatureEncoder)
    cache = FeatureCache(
        cfg.cache_dir or default_cache_dir(),
        encoder,
        name=encoder.cache_name if isinstance(encoder, Int8FeatureEncoder) else cfg.encoder,
        key=cfg.cache_key,
        batch_size=cfg.encode_batch_size,
        num_workers=cfg.num_workers,
        device=ctx.device,
        trace=not int8,  # the int8 graph is ONNX Runtime's already
    )
    all_paths = [p for s in wanted for p in splits[s].paths]
    if ctx.is_main:
        table, report = cache.build(all_paths, progress=cfg.progress)
        log(report.summary())
        skipped = report.failed
    ctx.barrier()  # rank 0 has written the cache; the others read it
    if not ctx.is_main:
        table = cache.load(all_paths)
        skipped = table.failed
    result = CachedInputs({}, {}, skipped)
    for s in wanted:
        rows = table.rows(splits[s].paths)
        keep = [i for i, r in enumerate(rows) if r is not None]
        result.sources[s] = splits[s].subset(keep)
        index = torch.tensor([rows[i] for i in keep], dtype=torch.long)
        shape = tuple(table.features.shape[1:]) if table.features.dim() >= 2 else (0,)
        result.features[s] = table.features[index] if keep else torch.zeros(0, *shape)  # (N, F) or (N, L, F)
        if cfg.zero_features:  # the language-only baseline: same data, no image
            result.features[s] = torch.zeros_like(result.features[s])
    return result


def report_skipped(skipped: list[tuple[str, str]], out: Path, log: Callable[[str], None], write: bool) -> None:
    """Name the unreadable images (the first ten) and list them all in OUT/skipped_images.json."""
    from . import runlog

    shown = "\n".join(f"  {p}: {r}" for p, r in skipped[:10])
    more = f"\n  ... and {len(skipped) - 10} more (all in {out / runlog.SKIPPED})" if len(skipped) > 10 else ""
    log(f"skipped {len(skipped)} unreadable image(s) and their captions:\n{shown}{more}")
    if write:
        runlog.write_json(out / runlog.SKIPPED, [list(x) for x in skipped])


def image_or_error(path: str, preprocess: Callable[[Any], np.ndarray]) -> tuple[np.ndarray | None, str | None]:
    """(image array (3, H, W), None) or (None, why it could not be read)."""
    got = try_prepare(path, preprocess, name=path)  # the one image path, as when serving
    return (None, got.reason) if isinstance(got, Failure) else (got, None)


class PairImages(torch.utils.data.Dataset):
    """Fine-tuning input: pair index -> (index, image tensor or None, error)."""

    def __init__(self, paths: list[str], pair_image: Tensor, preprocess: Callable[[Any], np.ndarray]) -> None:
        self.paths, self.pair_image, self.preprocess = paths, pair_image.tolist(), preprocess

    def __len__(self) -> int:
        return len(self.pair_image)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        x, err = image_or_error(self.paths[self.pair_image[i]], self.preprocess)
        return i, x, err


def encode_live(encoder: nn.Module, split: SplitData, preprocess: Any, device: torch.device, show: bool) -> Tensor:
    """Features (N, F) of a split from the (fine-tuned) encoder; unreadable images get zeros."""
    from .features import encode_images

    feats, _failed = encode_images(
        encoder, preprocess, split.paths, device=device, trace=False, progress=show, desc=f"encoding {split.name}"
    )
    dim = next(iter(feats.values())).numel() if feats else int(getattr(encoder, "feature_dim", 1))
    out = torch.zeros(len(split), dim)  # (N, F)
    for i, f in feats.items():
        out[i] = f
    return out
