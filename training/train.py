"""The training loop: cached CNN features -> a caption decoder trained with teacher forcing.

    from captioner.training.train import TrainConfig, train
    result = train(TrainConfig(data="data/scenes", out="runs/scenes"))
    result.best_path            # runs/scenes/best: a checkpoint Captioner.load() reads

One run, start to end:

1. **Data** - any supported dataset (``captioner.training.datasets.load_dataset``); the vocabulary
   is built from the *train* split's captions (words seen ``min_count`` times).
2. **Features** - the frozen encoder runs once per image into the feature cache
   (``captioner.training.features``); unreadable images are reported by name and their captions
   skipped. ``fine_tune`` != "none" bypasses the cache and trains (part of) the CNN too,
   with its own learning rate.
3. **Training** - teacher forcing over every (image, caption) pair, AdamW with weight
   decay on matrices only, a learning rate with linear warm-up and cosine decay,
   gradient-norm clipping, dropout, optional label smoothing, bf16/fp16 autocast on CUDA.
   The loss of a step is the summed token cross-entropy divided by the number of target
   tokens in the *global* batch, so N processes of batch B/N compute exactly the update
   one process of batch B does.
4. **Validation** every epoch - validation loss, greedy captions for the val images,
   BLEU-1..4 and CIDEr-D against all references, and the scene accuracy when the dataset
   has a scenes ground truth. The ``metric`` picks the ``best`` checkpoint and drives early
   stopping (``patience`` epochs without improvement).
5. **Checkpoints** - ``OUT/best`` (the best epoch) and ``OUT/last`` (every epoch, plus the
   optimizer moments, step, schedule, scaler and early-stopping state in
   ``trainer_state.safetensors`` + ``trainer_state.json``: no pickle), so ``resume=True``
   continues an interrupted run and ends with the same weights as an uninterrupted one.
   ``OUT/log.jsonl`` / ``OUT/log.csv`` get one row per epoch and ``OUT/curves.png`` the
   curves; at the end the best checkpoint is scored on the test split and the numbers are
   written to its ``metadata.json``.

Randomness: the weights are initialised from ``seed``; at the start of every epoch each
process re-seeds torch (dropout) from ``(seed, epoch, rank)`` and the sampler shuffles
with ``seed + epoch``. The random state at an epoch boundary is therefore fully given by
``(seed, epoch)``, which is what the ``last`` checkpoint stores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from captioner.checkpoint import METADATA, save_checkpoint
from captioner.decoder import CELLS, CaptionDecoder, DecoderConfig
from captioner.errors import CaptionerError, ImageLoadError
from captioner.images import load_image
from captioner.vocab import Vocabulary

from . import distributed
from .distributed import DistContext

METRICS = ("auto", "scene_accuracy", "bleu_4", "cider_d", "val_loss")
FINE_TUNE = ("none", "last", "all")
SCHEDULES = ("cosine", "constant")
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
STATE_FORMAT = "captioner-trainer-state/1"


# ============================================================================ configuration
@dataclass
class TrainConfig:
    """Every setting of a training run (saved as OUT/config.json and in each checkpoint)."""

    # --- data
    data: str = ""  # dataset folder or caption file (any format of training.datasets)
    format: str = "auto"  # auto | coco | flickr | karpathy | jsonl | csv
    images_dir: str | None = None  # image folder when it is not next to the caption file
    out: str = "runs/train"  # run folder: best/, last/, log.jsonl, curves.png
    min_count: int = 1  # a word enters the vocabulary after this many uses in train captions
    max_words: int = 30  # longer training captions are cut to this many words
    val_fraction: float = 0.05  # held out of train when the dataset has no val split
    max_val_images: int | None = None  # validate on the first N val images only (speed)
    # --- encoder and feature cache
    encoder: str = "efficientnet_lite0"
    encoder_weights: str = "pretrained"  # pretrained | random | path to a state dict
    cache_dir: str | None = None  # default: $CAPTIONER_CACHE or ~/.cache/captioner/features
    cache_key: str = "stat"  # stat (path, size, mtime) | content (SHA-256 of the bytes)
    encode_batch_size: int = 4  # small batches are fastest on a CPU (see docs/training.md)
    fine_tune: str = "none"  # none (cached features) | last (last blocks) | all
    fine_tune_blocks: int = 2  # with fine_tune=last: how many of the CNN's last blocks train
    encoder_lr: float = 1e-4
    # --- decoder (captioner.decoder.DecoderConfig)
    cell: str = "lstm"  # lstm | gru | rnn
    embed_dim: int = 256
    hidden_dim: int = 512
    img_proj_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.1
    init_state: bool = True
    # --- optimisation
    epochs: int = 20
    batch_size: int = 128  # global: split evenly over the processes of a torchrun launch
    lr: float = 2e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"  # cosine | constant (both after the linear warm-up)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    label_smoothing: float = 0.0
    amp: bool = True  # autocast on CUDA (bf16 when supported, else fp16 + loss scaling)
    seed: int = 0
    # --- validation, early stopping, output
    metric: str = "auto"  # auto: scene_accuracy with a scenes ground truth, else cider_d
    patience: int = 5  # stop after this many epochs without a better validation metric
    save_fp16: bool = False  # store the best checkpoint's weights in half precision
    evaluate_test: bool = True  # score the best checkpoint on the test split at the end
    zero_features: bool = False  # ablation: every image feature is zeros (what does the image add?)
    device: str | None = None  # None: cuda when available, else cpu
    num_workers: int = 0  # image-loading processes (feature caching and fine-tuning)
    threads: int | None = None  # torch CPU threads (None: torch's default); 1 is fastest on a busy CPU
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise CaptionerError(f"invalid training setting: {msg}")

        if self.cell not in CELLS:
            bad(f"cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        if self.fine_tune not in FINE_TUNE:
            bad(f"fine_tune must be one of {', '.join(FINE_TUNE)}, not {self.fine_tune!r}")
        if self.metric not in METRICS:
            bad(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.schedule not in SCHEDULES:
            bad(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.cache_key not in ("stat", "content"):
            bad(f"cache_key must be stat or content, not {self.cache_key!r}")
        for name in (
            "epochs",
            "batch_size",
            "min_count",
            "max_words",
            "embed_dim",
            "hidden_dim",
            "img_proj_dim",
            "num_layers",
            "encode_batch_size",
            "fine_tune_blocks",
        ):
            if int(getattr(self, name)) < 1:
                bad(f"{name} must be >= 1")
        if self.threads is not None and self.threads < 1:
            bad("threads must be >= 1")
        for name in ("warmup_steps", "patience", "num_workers"):
            if int(getattr(self, name)) < 0:
                bad(f"{name} must be >= 0")
        if not (self.lr > 0 and self.encoder_lr > 0):
            bad("learning rates must be > 0")
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            bad("dropout and label_smoothing must be in [0, 1)")
        if self.zero_features and self.fine_tune != "none":
            bad("zero_features is an ablation of cached features; it cannot be combined with fine_tune")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.min_lr_ratio <= 1:
            bad("val_fraction must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.grad_clip < 0 or self.weight_decay < 0:
            bad("grad_clip and weight_decay must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CaptionerError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)

    def decoder_config(self, vocab_size: int, feature_dim: int, max_length: int) -> DecoderConfig:
        return DecoderConfig(
            vocab_size=vocab_size,
            feature_dim=feature_dim,
            embed_dim=self.embed_dim,
            hidden_dim=self.hidden_dim,
            img_proj_dim=self.img_proj_dim,
            cell=self.cell,
            num_layers=self.num_layers,
            dropout=self.dropout,
            init_state=self.init_state,
            max_length=max_length,
        )


#: Settings that may differ when resuming (they do not change what is learned).
RESUME_OVERRIDABLE = (
    "out",
    "epochs",
    "patience",
    "device",
    "num_workers",
    "threads",
    "progress",
    "plot",
    "evaluate_test",
    "cache_dir",
    "max_val_images",
)


def default_cache_dir() -> Path:
    env = os.environ.get("CAPTIONER_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "captioner"
    return base / "features"


# ============================================================================ data
@dataclass
class SplitData:
    """The images of one split: paths, references, ids, and (for scenes) the ground truth."""

    name: str
    paths: list[str]
    captions: list[list[str]]
    ids: list[Any]
    truth: Any = None  # captioner.metrics.scene.SceneTruth when the dataset has one

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
    if "val" not in by_split:  # carve a deterministic validation set out of train
        n_val = max(1, round(len(by_split["train"]) * cfg.val_fraction))
        if len(by_split["train"]) < 2 or cfg.val_fraction == 0:
            raise CaptionerError(f"{cfg.data}: no val split and too few train images to hold some out")
        order = list(range(len(by_split["train"])))
        random.Random(cfg.seed).shuffle(order)
        train = by_split["train"]
        by_split["val"] = train.subset(sorted(order[:n_val]))
        by_split["val"].name = "val"
        by_split["train"] = train.subset(sorted(order[n_val:]))
        log(f"no val split in the dataset: holding out {n_val} train images for validation")
    if cfg.max_val_images:
        by_split["val"] = by_split["val"].subset(range(min(cfg.max_val_images, len(by_split["val"]))))

    data_dir = Path(cfg.data) if Path(cfg.data).is_dir() else Path(cfg.data).parent
    try:
        from captioner.metrics.scene import SceneTruth, find_scene_truth
    except ImportError:  # pragma: no cover - the metric ships with the package
        find_scene_truth = None
    for name, split in by_split.items():
        truth_file = find_scene_truth(data_dir, name) if find_scene_truth else None
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


@dataclass
class Pairs:
    """Every (image, caption) pair of a split as tensors: the training examples."""

    image: Tensor  # (N,) index into the split's images
    tokens: Tensor  # (N, T) <start> .. <end> <pad>..

    def __len__(self) -> int:
        return self.image.numel()


def make_pairs(vocab: Vocabulary, split: SplitData, max_words: int) -> Pairs:
    img, seqs = [], []
    for i, caps in enumerate(split.captions):
        for ids in encode_captions(vocab, caps, max_words):
            img.append(i)
            seqs.append(ids)
    if not seqs:
        raise CaptionerError(f"the {split.name} split has no captions left to train on")
    return Pairs(torch.tensor(img, dtype=torch.long), pad(seqs, vocab.pad_id))


# ============================================================================ model pieces
class CaptionModel(nn.Module):
    """What the optimizer trains: the decoder, plus the encoder when fine-tuning.

    ``forward(x, tokens)`` takes cached features (B, F) or, with an encoder, images
    (B, 3, H, W), and returns teacher-forced logits (B, T-1, V).
    """

    def __init__(self, decoder: CaptionDecoder, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        feats = self.encoder(x) if self.encoder is not None else x  # (B, F)
        return self.decoder(feats, tokens)  # (B, T-1, V)


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
    units = encoder_units(encoder) if mode == "last" else [encoder]
    for u in units[-blocks:] if mode == "last" else units:
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


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    warm = min(cfg.warmup_steps, max(total - 1, 0))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


# ============================================================================ feature sources
class CachedSource:
    """Features of a split from the feature cache; drops images that could not be read."""

    def __init__(self, table, split: SplitData) -> None:
        rows = table.rows(split.paths)
        keep = [i for i, r in enumerate(rows) if r is not None]
        self.split = split.subset(keep)
        self.features = (
            table.features[torch.tensor([rows[i] for i in keep], dtype=torch.long)]
            if keep
            else torch.zeros(0, table.features.size(1) if table.features.dim() == 2 else 0)
        )  # (N, F)


def _image_or_error(path: str, preprocess) -> tuple[Tensor | None, str | None]:
    try:
        return preprocess(load_image(path, name=path)), None
    except ImageLoadError as e:
        return None, e.reason
    except (OSError, ValueError, RuntimeError) as e:
        return None, f"{type(e).__name__}: {e}"


class _PairImages(torch.utils.data.Dataset):
    """Fine-tuning input: pair index -> (index, image tensor or None, error)."""

    def __init__(self, paths: list[str], pair_image: Tensor, preprocess) -> None:
        self.paths, self.pair_image, self.preprocess = paths, pair_image.tolist(), preprocess

    def __len__(self) -> int:
        return len(self.pair_image)

    def __getitem__(self, i: int):
        x, err = _image_or_error(self.paths[self.pair_image[i]], self.preprocess)
        return i, x, err


# ============================================================================ evaluation
@torch.no_grad()
def greedy_captions(
    decoder: CaptionDecoder, features: Tensor, vocab: Vocabulary, device: torch.device, batch_size: int = 512
) -> list[str]:
    """Greedy captions of features (N, F), as strings."""
    decoder.eval()
    out: list[str] = []
    for i in range(0, features.size(0), batch_size):
        ids, _ = decoder.greedy(features[i : i + batch_size].to(device), vocab.start_id, vocab.end_id)
        out.extend(vocab.decode(t) for t in ids)
    return out


def caption_metrics(captions: Sequence[str], split: SplitData, metrics: Sequence[str] = ("bleu", "cider")) -> dict:
    """BLEU-1..4, CIDEr-D (and scene accuracy when the split has a ground truth) of captions."""
    from captioner.metrics import score_captions

    preds = {i: c for i, c in enumerate(captions)}
    refs = {i: r for i, r in enumerate(split.captions)}
    scores = score_captions(preds, refs, metrics)
    out = {k: float(v) for k, v in scores.items()}
    if split.truth is not None:
        from captioner.metrics.scene import scene_accuracy

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
) -> tuple[float, float]:
    """(summed token cross-entropy, number of tokens) over this rank's share of ``pairs``."""
    decoder.eval()
    total, count = 0.0, 0.0
    idx = torch.arange(rank, len(pairs), world)
    for i in range(0, idx.numel(), batch_size):
        b = idx[i : i + batch_size]
        toks = _trim(pairs.tokens[b]).to(device)  # (B, T)
        logits = decoder(features[pairs.image[b]].to(device), toks)  # (B, T-1, V)
        total += F.cross_entropy(
            logits.flatten(0, 1).float(), toks[:, 1:].flatten(), ignore_index=0, reduction="sum"
        ).item()
        count += (toks[:, 1:] != 0).sum().item()
    return total, count


def _trim(tokens: Tensor) -> Tensor:
    """Drop the all-padding columns at the end of a batch (B, T) -> (B, T')."""
    lengths = (tokens != 0).sum(1)
    return tokens[:, : int(lengths.max())]


# ============================================================================ trainer state
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Optimizer state as (tensors for safetensors, JSON for the rest): no pickle."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        scalars[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[str(pid)][k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = t
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


@dataclass
class TrainerState:
    """What ``resume`` needs besides the weights (the JSON half of the trainer state)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_score: list[float] | None = None  # (metric, -val_loss) of the best epoch
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    stopped_early: bool = False
    elapsed: float = 0.0  # seconds of training so far (all sessions)
    feature_seconds: float = 0.0
    scaler: dict | None = None


def save_last(
    out: Path,
    *,
    model: CaptionModel,
    decoder_config: DecoderConfig,
    cfg: TrainConfig,
    vocab: Vocabulary,
    encoder_name: str,
    preprocess: dict,
    metadata: dict,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    history: list[dict] | None = None,
) -> Path:
    """Write OUT/last atomically: a loadable checkpoint plus the trainer state (with the
    per-epoch log rows, so a resumed run's log is complete whatever happened to log.jsonl)."""
    building = out / ".last-building"
    if building.exists():
        shutil.rmtree(building)
    enc_state = model.encoder.state_dict() if model.encoder is not None else None
    save_checkpoint(
        building,
        decoder=model.decoder,
        decoder_config=decoder_config,
        encoder_name=encoder_name,
        preprocess=preprocess,
        vocab=vocab,
        metadata=metadata,
        encoder_state=enc_state,
    )
    tensors, opt_meta = _flatten_optimizer(optimizer)
    save_file(tensors or {"empty": torch.zeros(0)}, str(building / STATE_TENSORS), metadata={"format": STATE_FORMAT})
    with open(building / STATE_JSON, "w", encoding="utf-8") as f:
        json.dump(
            {
                "format": STATE_FORMAT,
                "config": cfg.to_dict(),
                "trainer": asdict(state),
                "optimizer": opt_meta,
                "history": history or [],
            },
            f,
            indent=1,
        )
        f.flush()
        os.fsync(f.fileno())
    target = out / "last"
    if target.exists():
        old = out / ".last-old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(building, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(building, target)
    return target


def read_last(out: Path) -> tuple[dict, dict[str, Tensor]]:
    """(trainer_state.json, trainer_state.safetensors) of OUT/last."""
    last = out / "last"
    try:
        meta = json.loads((last / STATE_JSON).read_text(encoding="utf-8"))
        tensors = _load_tensors(last / STATE_TENSORS)
    except FileNotFoundError:
        raise CaptionerError(
            f"{last}: no resumable state here (missing {STATE_JSON} or {STATE_TENSORS}); "
            "run without --resume to start afresh"
        ) from None
    except (OSError, ValueError) as e:
        raise CaptionerError(f"{last}: the trainer state is unreadable ({e}); run without --resume") from None
    if meta.get("format") != STATE_FORMAT:
        raise CaptionerError(f"{last / STATE_JSON}: unsupported trainer state format {meta.get('format')!r}")
    return meta, tensors


def check_resume_config(saved: dict, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` if it only differs from the saved run's settings in :data:`RESUME_OVERRIDABLE`.

    Anything else (data, model, optimisation) must match: a resumed run that learned
    differently would not be the run it claims to continue.
    """
    mine = cfg.to_dict()
    diff = [
        f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in mine if k not in RESUME_OVERRIDABLE and saved.get(k) != mine[k]
    ]
    if diff:
        raise CaptionerError(
            "cannot resume with different settings (" + "; ".join(diff[:6]) + "); "
            "only " + ", ".join(RESUME_OVERRIDABLE) + " may change"
        )
    return cfg


def resume_config(out: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The settings of the run in ``out`` with some of :data:`RESUME_OVERRIDABLE` changed."""
    meta, _ = read_last(Path(out))
    values = dict(meta["config"], out=str(out))
    bad = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
    if bad:
        raise CaptionerError(
            f"cannot change {', '.join(bad)} when resuming; only " + ", ".join(RESUME_OVERRIDABLE) + " may change"
        )
    values.update(overrides)
    return TrainConfig.from_dict(values)


# ============================================================================ logging and metadata
def _environment() -> dict:
    import captioner

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "captioner": captioner.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _replace_atomically(path: Path, write: Callable[[Any], None], **open_kw: Any) -> None:
    """Write ``path`` through a temporary sibling and rename it into place, so a crash
    leaves the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", **open_kw) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_log(out: Path, history: list[dict]) -> None:
    """log.jsonl and log.csv, each replaced atomically. Written before ``last`` so that a
    resumable state never points at epochs missing from the log."""
    _replace_atomically(out / "log.jsonl", lambda f: f.writelines(json.dumps(row) + "\n" for row in history))
    keys: list[str] = []
    for row in history:
        keys.extend(k for k, v in row.items() if k not in keys and not isinstance(v, (dict, list)))

    def write_csv(f: Any) -> None:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)

    _replace_atomically(out / "log.csv", write_csv, newline="")


def _read_log(out: Path, upto_epoch: int) -> list[dict]:
    path = out / "log.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a torn line from an older, non-atomic writer: skip it
            continue
        if isinstance(row, dict):
            rows.append(row)
    return [r for r in rows if r.get("epoch", 0) <= upto_epoch]


def _load_tensors(path: Path) -> dict[str, Tensor]:
    """safetensors only; anything else (a pickle, a torn file) is a clear CaptionerError."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CaptionerError(
            f"{path}: not a valid safetensors file ({e}); it was not loaded. Run without --resume to start afresh"
        ) from None


@dataclass
class TrainResult:
    out: Path
    best_path: Path
    best_epoch: int
    best_metrics: dict
    test_metrics: dict | None
    history: list[dict]
    feature_seconds: float
    train_seconds: float
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    is_main: bool = True  # False on the other processes of a torchrun launch

    @property
    def total_seconds(self) -> float:
        return self.feature_seconds + self.train_seconds


# ============================================================================ the run
def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    ctx: DistContext | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a caption model as ``cfg`` says; see the module docstring.

    ``resume=True`` continues the run in ``cfg.out`` from its ``last`` checkpoint.
    ``on_epoch_end(row)`` is called (on every process) after each epoch with the log row.
    """
    own_ctx = ctx is None
    ctx = ctx or distributed.setup(cfg.device)
    try:
        return _train(cfg, resume, ctx, on_epoch_end)
    finally:
        if own_ctx:
            distributed.cleanup(ctx)


def _train(cfg: TrainConfig, resume: bool, ctx: DistContext, on_epoch_end) -> TrainResult:
    from tqdm.auto import tqdm

    from captioner.encoders import build_encoder

    from .features import FeatureCache

    out = Path(cfg.out)
    show = cfg.progress and ctx.is_main
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def log(msg: str) -> None:
        if ctx.is_main:
            tqdm.write(msg, file=sys.stderr)

    saved_meta, saved_tensors = (None, None)
    if resume:
        saved_meta, saved_tensors = read_last(out)
        cfg = check_resume_config(saved_meta["config"], cfg)
        log(f"resuming {out} after epoch {saved_meta['trainer']['epoch']}")
    elif (out / "last").exists():
        raise CaptionerError(
            f"{out}: a training run is already here; pass --resume to continue it, or choose another --out"
        )
    if cfg.batch_size % ctx.world_size:
        raise CaptionerError(f"batch size {cfg.batch_size} does not split evenly over {ctx.world_size} processes")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
    ctx.barrier()

    # ---------------------------------------------------------------- data and vocabulary
    splits, data_info = load_splits(cfg, log)
    vocab = Vocabulary.build((c for caps in splits["train"].captions for c in caps), min_count=cfg.min_count)
    if resume:
        vocab = Vocabulary.from_dict(json.loads((out / "last" / "vocab.json").read_text(encoding="utf-8")))
    log(f"data: {data_info['splits']} images; vocabulary {len(vocab)} tokens (min count {cfg.min_count})")

    # ---------------------------------------------------------------- encoder and features
    t_feat = time.perf_counter()
    seed_everything(cfg.seed)  # a randomly initialised encoder (weights="random") is the same on every launch
    encoder = build_encoder(cfg.encoder, weights=cfg.encoder_weights)
    preprocess = encoder.spec.preprocess
    preprocess_dict = preprocess.to_dict()
    wanted = ["train", "val"] + (["test"] if cfg.evaluate_test and "test" in splits else [])
    skipped: list[tuple[str, str]] = []
    sources: dict[str, SplitData] = {}
    feats: dict[str, Tensor] = {}
    if cfg.fine_tune == "none":
        cache = FeatureCache(
            cfg.cache_dir or default_cache_dir(),
            encoder,
            name=cfg.encoder,
            key=cfg.cache_key,
            batch_size=cfg.encode_batch_size,
            num_workers=cfg.num_workers,
            device=ctx.device,
        )
        all_paths = [p for s in wanted for p in splits[s].paths]
        if ctx.is_main:
            table, report = cache.build(all_paths, progress=show)
            log(report.summary())
            skipped = report.failed
        ctx.barrier()  # rank 0 has written the cache; the others read it
        if not ctx.is_main:
            table = cache.load(all_paths)
            skipped = table.failed
        for s in wanted:
            src = CachedSource(table, splits[s])
            sources[s], feats[s] = src.split, src.features
        del table
        if cfg.zero_features:  # the language-only baseline: same data, no image
            feats = {s: torch.zeros_like(f) for s, f in feats.items()}
        encoder = None  # the decoder trains alone
    else:  # fine-tuning: images are read and encoded at every step, no cache
        for s in wanted:
            sources[s] = splits[s]
    if skipped:
        shown = "\n".join(f"  {p}: {r}" for p, r in skipped[:10])
        more = (
            f"\n  ... and {len(skipped) - 10} more (all in {out / 'skipped_images.json'})" if len(skipped) > 10 else ""
        )
        log(f"skipped {len(skipped)} unreadable image(s) and their captions:\n{shown}{more}")
        if ctx.is_main:
            (out / "skipped_images.json").write_text(json.dumps([list(x) for x in skipped], indent=1), encoding="utf-8")
    for s in ("train", "val"):
        if len(sources[s]) == 0:
            raise CaptionerError(f"no readable images left in the {s} split")
    feature_seconds = time.perf_counter() - t_feat
    pairs = {s: make_pairs(vocab, sources[s], cfg.max_words) for s in ("train", "val")}
    longest = int((pairs["train"].tokens != 0).sum(1).max()) - 2
    max_length = min(cfg.max_words, longest + 5)

    # ---------------------------------------------------------------- model and optimizer
    seed_everything(cfg.seed)
    feature_dim = encoder.feature_dim if encoder is not None else feats["train"].size(1)
    dcfg = cfg.decoder_config(len(vocab), feature_dim, max_length)
    decoder = CaptionDecoder(dcfg)
    encoder_params: list[nn.Parameter] = []
    if encoder is not None:
        encoder_params = set_trainable_encoder(encoder, cfg.fine_tune, cfg.fine_tune_blocks)
        encoder.eval()
    model = CaptionModel(decoder, encoder).to(ctx.device)
    optimizer = build_optimizer(decoder, encoder_params, cfg)
    amp_dtype = None
    if cfg.amp and ctx.device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    state = TrainerState()
    history: list[dict] = []
    if resume:
        last = out / "last"
        decoder.load_state_dict({k: v.float() for k, v in _load_tensors(last / "model.safetensors").items()})
        if encoder is not None and (last / "encoder.safetensors").exists():
            encoder.load_state_dict(_load_tensors(last / "encoder.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(saved_tensors, saved_meta["optimizer"]))
        state = TrainerState(**saved_meta["trainer"])
        if state.scaler:
            scaler.load_state_dict(state.scaler)
        saved_rows = [r for r in saved_meta.get("history") or [] if r.get("epoch", 0) <= state.epoch]
        history = saved_rows or _read_log(out, state.epoch)
        feature_seconds += state.feature_seconds
    else:
        state.feature_seconds = feature_seconds

    ddp_model: nn.Module = model
    if ctx.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    metric = cfg.metric
    if metric == "auto":
        metric = "scene_accuracy" if sources["val"].truth is not None else "cider_d"
    per_rank = cfg.batch_size // ctx.world_size
    sampler = torch.utils.data.DistributedSampler(
        range(len(pairs["train"])),
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=False,
    )
    steps_per_epoch = math.ceil(len(sampler) / per_rank)
    total_steps = steps_per_epoch * cfg.epochs
    train_feats = feats.get("train")
    tr_pairs = pairs["train"]
    enc_name = cfg.encoder
    log(
        f"training {sum(p.numel() for p in decoder.parameters()) / 1e6:.2f}M decoder parameters "
        f"({cfg.cell}, hidden {cfg.hidden_dim}) on {len(tr_pairs)} caption pairs, {steps_per_epoch} steps/epoch"
        f"{f', {ctx.world_size} processes' if ctx.distributed else ''}, selecting by {metric}"
    )

    t_session = time.perf_counter()
    elapsed_before = state.elapsed
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.stopped_early:
            break
        t_epoch = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch, ctx.rank))  # dropout masks of this epoch
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)), dtype=torch.long)
        batches = [order[i : i + per_rank] for i in range(0, order.numel(), per_rank)]
        model.train()
        if encoder is not None:
            encoder.eval()  # frozen batch-norm statistics
            loader = iter(
                torch.utils.data.DataLoader(
                    _PairImages(sources["train"].paths, tr_pairs.image, preprocess),
                    batch_sampler=[b.tolist() for b in batches],
                    num_workers=cfg.num_workers,
                    collate_fn=list,
                )
            )
        sum_loss = sum_tok = sum_norm = 0.0
        bar = tqdm(
            batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", disable=not show, dynamic_ncols=True, leave=False
        )
        for b in bar:
            if encoder is not None:
                items = next(loader)
                for i, x, err in items:
                    if x is None:
                        name = sources["train"].paths[int(tr_pairs.image[i])]
                        if name not in {p for p, _ in skipped}:
                            skipped.append((name, err))
                            log(f"skipped unreadable image {name}: {err}")
                ok = [(i, x) for i, x, _ in items if x is not None]
                b = torch.tensor([i for i, _ in ok], dtype=torch.long)
                x = torch.stack([t for _, t in ok]).to(ctx.device) if ok else None  # (B, 3, H, W)
            else:
                x = train_feats[tr_pairs.image[b]].to(ctx.device, non_blocking=True)  # (B, F)
            toks = _trim(tr_pairs.tokens[b]).to(ctx.device) if b.numel() else None  # (B, T)
            n_tok = float((toks[:, 1:] != 0).sum()) if toks is not None else 0.0
            global_tok = float(ctx.all_reduce_sum([n_tok])[0]) if ctx.distributed else n_tok
            lr_f = lr_factor(state.step, total_steps, cfg)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_f
            with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if toks is not None:
                    logits = ddp_model(x, toks)  # (B, T-1, V)
                    loss_sum = F.cross_entropy(
                        logits.flatten(0, 1).float(),
                        toks[:, 1:].flatten(),
                        ignore_index=0,
                        reduction="sum",
                        label_smoothing=cfg.label_smoothing,
                    )
                else:  # every image of this rank's batch was unreadable: contribute zero gradient
                    loss_sum = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            # mean over the global batch's tokens; DDP averages gradients over ranks, hence * world
            loss = loss_sum / max(global_tok, 1.0) * ctx.world_size
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            params = [p for p in model.parameters() if p.requires_grad]
            norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            sum_loss += float(loss_sum.detach())
            sum_tok += n_tok
            sum_norm += float(norm)
            if show:
                bar.set_postfix(loss=f"{sum_loss / max(sum_tok, 1):.3f}", lr=f"{cfg.lr * lr_f:.2e}")
        bar.close()

        # ------------------------------------------------------------ validation
        tot = ctx.all_reduce_sum([sum_loss, sum_tok, sum_norm, len(batches)])
        train_loss = float(tot[0] / max(tot[1], 1))
        val_feats = feats.get("val")
        if encoder is not None:
            val_feats = _encode_live(encoder, sources["val"], preprocess, ctx, show)
        vl = ctx.all_reduce_sum(
            teacher_forced_loss(decoder, val_feats, pairs["val"], ctx.device, ctx.rank, ctx.world_size)
        )
        val_loss = float(vl[0] / max(vl[1], 1))
        mine = list(range(ctx.rank, len(sources["val"]), ctx.world_size))
        caps = greedy_captions(decoder, val_feats[mine], vocab, ctx.device) if mine else []
        gathered = ctx.gather_objects(list(zip(mine, caps)))
        metrics = None
        if ctx.is_main:
            by_index = dict(p for part in gathered for p in part)
            all_caps = [by_index[i] for i in range(len(sources["val"]))]
            metrics = caption_metrics(all_caps, sources["val"])
            metrics["examples"] = all_caps[:3]
        metrics = ctx.broadcast_object(metrics)
        state.elapsed = elapsed_before + (time.perf_counter() - t_session)
        row = {
            "epoch": epoch,
            "step": state.step,
            "lr": cfg.lr * lr_factor(max(state.step - 1, 0), total_steps, cfg),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "grad_norm": float(tot[2] / max(tot[3], 1)),
            **{k: v for k, v in metrics.items() if k not in ("examples",)},
            "epoch_seconds": time.perf_counter() - t_epoch,
            "elapsed_seconds": state.elapsed,
        }
        value = val_loss if metric == "val_loss" else metrics.get(metric)
        if value is None:
            raise CaptionerError(
                f"metric {metric!r} is not available for this dataset; pass --metric "
                f"(one of {', '.join(k for k in METRICS if k != 'auto')})"
            )
        score = [-value, -val_loss] if metric == "val_loss" else [value, -val_loss]
        improved = state.best_score is None or score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
            state.stopped_early = state.bad_epochs >= cfg.patience > 0
        state.epoch = epoch
        state.scaler = scaler.state_dict() if scaler.is_enabled() else None
        row["best"] = improved
        history.append(row)
        log(
            f"epoch {epoch}: loss {train_loss:.3f} val {val_loss:.3f} | "
            + " ".join(f"{k} {row[k]:.4f}" for k in ("bleu_4", "cider_d", "scene_accuracy") if k in row)
            + (" *" if improved else "")
            + f" | {row['epoch_seconds']:.1f}s | {metrics['examples'][0]!r}"
        )

        if ctx.is_main:
            meta = _metadata(cfg, data_info, epoch, metric, row, feature_seconds, state.elapsed)
            enc_state = encoder.state_dict() if encoder is not None else None
            if improved:
                save_checkpoint(
                    out / "best",
                    decoder=decoder,
                    decoder_config=dcfg,
                    encoder_name=enc_name,
                    preprocess=preprocess_dict,
                    vocab=vocab,
                    metadata=meta,
                    encoder_state=enc_state,
                    dtype=torch.float16 if cfg.save_fp16 else None,
                )
            _write_log(out, history)
            save_last(
                out,
                model=model,
                decoder_config=dcfg,
                cfg=cfg,
                vocab=vocab,
                encoder_name=enc_name,
                preprocess=preprocess_dict,
                metadata=meta,
                optimizer=optimizer,
                state=state,
                history=history,
            )
            if cfg.plot:
                from .plot import plot_history

                plot_history(history, out / "curves.png", metric=metric)
        ctx.barrier()
        if on_epoch_end is not None:
            on_epoch_end(row)
        if state.stopped_early:
            log(f"early stop: no better {metric} for {cfg.patience} epochs (best: epoch {state.best_epoch})")

    train_seconds = state.elapsed
    # ---------------------------------------------------------------- test the best checkpoint
    best_row = next((r for r in history if r["epoch"] == state.best_epoch), {})
    test_metrics = None
    if cfg.evaluate_test and "test" in sources and len(sources["test"]) and ctx.is_main:
        from captioner.checkpoint import load_checkpoint

        ck = load_checkpoint(out / "best")
        best = CaptionDecoder(ck.decoder_config).to(ctx.device)
        best.load_state_dict(ck.decoder_state)
        if encoder is not None:
            if ck.encoder_state is not None:
                encoder.load_state_dict(ck.encoder_state)
            test_feats = _encode_live(encoder, sources["test"], preprocess, DistContext(device=ctx.device), show)
        else:
            test_feats = feats["test"]
        caps = greedy_captions(best, test_feats, vocab, ctx.device)
        test_metrics = caption_metrics(caps, sources["test"])
        test_metrics["images"] = len(caps)
        meta = json.loads((out / "best" / METADATA).read_text(encoding="utf-8"))
        meta["test"] = {k: v for k, v in test_metrics.items()}
        meta["test_examples"] = [{"id": sources["test"].ids[i], "caption": caps[i]} for i in range(min(5, len(caps)))]
        _rewrite_json(out / "best" / METADATA, meta)
        with open(out / "test_captions.jsonl", "w", encoding="utf-8") as f:  # for error analysis
            for i, c in enumerate(caps):
                f.write(
                    json.dumps(
                        {
                            "id": sources["test"].ids[i],
                            "file": sources["test"].paths[i],
                            "caption": c,
                            "references": sources["test"].captions[i],
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        log(
            f"test (best checkpoint, epoch {state.best_epoch}): "
            + " ".join(
                f"{k} {test_metrics[k]:.4f}" for k in ("bleu_4", "cider_d", "scene_accuracy") if k in test_metrics
            )
        )
    if ctx.is_main:
        run = {
            "command": _command_line(),
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch,
            "stopped_early": state.stopped_early,
            "feature_seconds": round(feature_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(feature_seconds + train_seconds, 1),
            "processes": ctx.world_size,
            "load_average_at_end": list(os.getloadavg()),
        }
        if (out / "best" / METADATA).exists():  # the whole run, not just up to the best epoch
            meta = json.loads((out / "best" / METADATA).read_text(encoding="utf-8"))
            meta["run"] = run
            _rewrite_json(out / "best" / METADATA, meta)
        summary = {
            **run,
            "metric": metric,
            "best_val": best_row,
            "test": test_metrics,
            "skipped_images": [list(s) for s in skipped],
        }
        _rewrite_json(out / "results.json", summary)
    ctx.barrier()
    return TrainResult(
        out=out,
        best_path=out / "best",
        best_epoch=state.best_epoch,
        best_metrics=best_row,
        test_metrics=test_metrics,
        history=history,
        feature_seconds=feature_seconds,
        train_seconds=train_seconds,
        skipped_images=skipped,
        is_main=ctx.is_main,
    )


def _encode_live(encoder: nn.Module, split: SplitData, preprocess, ctx: DistContext, show: bool) -> Tensor:
    """Features of a split from the (fine-tuned) encoder; unreadable images get zero features."""
    from .features import encode_images

    feats, _failed = encode_images(
        encoder, preprocess, split.paths, device=ctx.device, trace=False, progress=show, desc=f"encoding {split.name}"
    )
    dim = next(iter(feats.values())).numel() if feats else getattr(encoder, "feature_dim", 1)
    out = torch.zeros(len(split), dim)
    for i, f in feats.items():
        out[i] = f
    return out  # (N, F)


def _metadata(
    cfg: TrainConfig, data_info: dict, epoch: int, metric: str, row: dict, feature_seconds: float, train_seconds: float
) -> dict:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": data_info,
        "epoch": epoch,
        "selected_by": metric,
        "val": {k: v for k, v in row.items() if k not in ("best",)},
        "timing": {
            "feature_seconds": round(feature_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(feature_seconds + train_seconds, 1),
        },
        "train_config": cfg.to_dict(),
        "environment": _environment(),
    }


def _command_line() -> str:
    """How this process was started, e.g. ``captioner train --data data/scenes ...``."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog == "cli_train.py" or prog.endswith("-m"):
        prog = "python -m captioner.training.cli_train"
    return " ".join([prog, *sys.argv[1:]])


def _rewrite_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
