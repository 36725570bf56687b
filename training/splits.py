"""The data of a run: train / val / test splits of a dataset, and their (image, caption) pairs.

The vocabulary is built from the train split's captions; a dataset without a val split
gets ``val_fraction`` of train held out (deterministic for the seed). A split of a scenes
dataset carries its ground truth, for the scene accuracy.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captioner.errors import CaptionerError
from captioner.metrics.scene import SceneTruth, find_scene_truth
from captioner.vocab import Vocabulary

from .config import TrainConfig


@dataclass
class SplitData:
    """The images of one split: paths, references, ids, and (for scenes) the ground truth."""

    name: str
    paths: list[str]
    captions: list[list[str]]
    ids: list[Any]
    truth: SceneTruth | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> SplitData:
        return SplitData(
            self.name,
            [self.paths[i] for i in keep],
            [self.captions[i] for i in keep],
            [self.ids[i] for i in keep],
            self.truth,
        )


def load_splits(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[dict[str, SplitData], dict]:
    """Train / val / (test) splits of the dataset, and facts about it for the metadata."""
    from captioner.training.datasets import load_dataset

    if not cfg.data:
        raise CaptionerError(
            "no dataset given; pass --data (a folder like the one `captioner data scenes` writes, or a caption file)"
        )
    ds = load_dataset(cfg.data, cfg.format, images_dir=cfg.images_dir, progress=cfg.progress)
    if not ds.report.ok:
        log(ds.report.summary())
    by_split: dict[str, SplitData] = {}
    for item in ds.items:
        s = by_split.setdefault(item.split, SplitData(item.split, [], [], []))
        s.paths.append(str(item.image_path))
        s.captions.append(list(item.captions))
        s.ids.append(item.image_id)
    if "train" not in by_split and "restval" in by_split:
        by_split["train"] = by_split.pop("restval")
    if "train" not in by_split:
        raise CaptionerError(f"{cfg.data}: the dataset has no train split (splits: {sorted(by_split) or 'none'})")
    if "val" not in by_split:
        by_split["train"], by_split["val"] = hold_out(by_split["train"], cfg.val_fraction, cfg.seed, cfg.data)
        log(f"no val split in the dataset: holding out {len(by_split['val'])} train images for validation")
    if cfg.max_val_images:
        by_split["val"] = by_split["val"].subset(range(min(cfg.max_val_images, len(by_split["val"]))))

    data_dir = Path(cfg.data) if Path(cfg.data).is_dir() else Path(cfg.data).parent
    for name, split in by_split.items():
        truth_file = find_scene_truth(data_dir, name)
        if truth_file is not None:
            split.truth = SceneTruth.load(truth_file)
    info: dict[str, Any] = {
        "path": str(Path(cfg.data).resolve()),
        "format": ds.format,
        "splits": {k: len(v) for k, v in by_split.items()},
        "captions": {k: sum(len(c) for c in v.captions) for k, v in by_split.items()},
    }
    meta_file = data_dir / "dataset.json"
    if meta_file.is_file():  # a scenes dataset records its generator, seed and sizes
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            info["generator"] = {k: meta.get(k) for k in ("generator", "version", "seed", "splits", "image_format")}
        except (OSError, ValueError):
            pass
    return by_split, info


def sizes_line(info: dict) -> str:
    """The data's sizes as a person reads them: ``train 32,000 images (160,000 captions),
    val 500 images (2,500 captions)``, from :func:`load_splits`' facts."""
    captions = info.get("captions", {})
    parts = []
    for name, images in info["splits"].items():
        text = f"{name} {images:,} image{'s' if images != 1 else ''}"
        if name in captions:
            text += f" ({captions[name]:,} caption{'s' if captions[name] != 1 else ''})"
        parts.append(text)
    return ", ".join(parts)


def hold_out(train: SplitData, fraction: float, seed: int, source: str) -> tuple[SplitData, SplitData]:
    """(train, val): a deterministic ``fraction`` of train (at least one image) as validation."""
    if len(train) < 2 or fraction == 0:
        raise CaptionerError(f"{source}: no val split and too few train images to hold some out")
    n_val = max(1, round(len(train) * fraction))
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    val = train.subset(sorted(order[:n_val]))
    val.name = "val"
    return train.subset(sorted(order[n_val:])), val


def build_vocabulary(train: SplitData, min_count: int) -> Vocabulary:
    """The vocabulary of a new run: the words of the train captions used ``min_count`` times."""
    return Vocabulary.build((c for caps in train.captions for c in caps), min_count=min_count)


def encode_captions(vocab: Vocabulary, captions: Sequence[str], max_words: int) -> list[list[int]]:
    """``<start> w1 .. wn <end>`` ids of each caption, cut to ``max_words`` words."""
    out = []
    for c in captions:
        ids = vocab.encode(c, add_special=False)[:max_words]
        out.append([vocab.start_id, *ids, vocab.end_id])
    return out


def pad(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> Tensor:
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (N, T)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def trim_padding(tokens: Tensor) -> Tensor:
    """Drop the all-padding columns at the end of a batch (B, T) -> (B, T')."""
    lengths = (tokens != 0).sum(1)  # (B,)
    return tokens[:, : int(lengths.max())]


@dataclass
class Pairs:
    """Every (image, caption) pair of a split as tensors: the training examples."""

    image: Tensor  # (N,) index into the split's images
    tokens: Tensor  # (N, T) <start> .. <end> <pad>..

    def __len__(self) -> int:
        return self.image.numel()

    @property
    def longest_caption(self) -> int:
        """Words in the longest caption (without <start> and <end>)."""
        return int((self.tokens != 0).sum(1).max()) - 2


def make_pairs(vocab: Vocabulary, split: SplitData, max_words: int) -> Pairs:
    img, seqs = [], []
    for i, caps in enumerate(split.captions):
        for ids in encode_captions(vocab, caps, max_words):
            img.append(i)
            seqs.append(ids)
    if not seqs:
        raise CaptionerError(f"the {split.name} split has no captions left to train on")
    return Pairs(torch.tensor(img, dtype=torch.long), pad(seqs, vocab.pad_id))
