"""The settings of a training run: :class:`TrainConfig`, checked when it is built.

Every field is one ``captioner train`` flag (``training/cli_train.py`` derives them) and is
saved as ``OUT/config.json`` and in every checkpoint's metadata.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from captioner.attention import DECODER_KINDS, AttentionConfig
from captioner.decoder import CELLS, DecoderConfig
from captioner.errors import CaptionerError
from captioner.runtime.graphs import PRECISIONS

METRICS = ("auto", "scene_accuracy", "bleu_4", "cider_d", "val_loss")
FINE_TUNE = ("none", "last", "all")
SCHEDULES = ("cosine", "constant")
CACHE_KEYS = ("stat", "content")
#: Settings that must be >= 1.
POSITIVE = (
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
    "attention_dim",
)
_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # before any run changed it

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


class SettingError(CaptionerError):
    """A training setting out of its allowed range, of the wrong type, or unknown (the CLI's
    exit status 2). ``key``: the setting at fault, when there is one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


#: What a value of each annotated type must be, in the words of a JSON config file.
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _type_name(value: object) -> str:
    """``value``'s kind in JSON words (a config file is JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _is_type(value: object, kind: str) -> bool:
    """Whether ``value`` is a ``kind`` ("int", "float", "str", "bool"); an int is a float too,
    a bool is neither (JSON tells them apart, and ``True`` epochs is a mistake)."""
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    return isinstance(value, str) if kind == "str" else True


def type_problem(name: str, annotation: object, value: object) -> str | None:
    """Why ``value`` cannot be the setting ``name`` of this annotation (``"int | None"``, ...),
    naming the key, the value and the expected type; None when it can. Unknown annotations pass."""
    text = str(annotation)
    optional = text.endswith(" | None")
    kind = text.removesuffix(" | None")
    if kind not in _TYPE_WORDS or (optional and value is None) or _is_type(value, kind):
        return None
    expected = _TYPE_WORDS[kind] + (" or null" if optional else "")
    return f"{name} must be {expected}, got {value!r} ({_type_name(value)})"


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
    # --- decoder (captioner.decoder.DecoderConfig; captioner.attention.AttentionConfig)
    decoder: str = "pooled"  # pooled (one pooled feature) | attention (soft attention over the feature map)
    cell: str = "lstm"  # lstm | gru | rnn
    embed_dim: int = 256
    hidden_dim: int = 512
    img_proj_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.1
    init_state: bool = True
    attention_dim: int = 256  # decoder=attention: hidden size of the attention MLP
    attention_lambda: float = 0.02  # decoder=attention: weight of the doubly stochastic regulariser
    annotation_dim: int = 512  # decoder=attention: learned annotation per location; 0: the raw channels
    attention_sentinel: bool = False  # decoder=attention: a learned "look nowhere" choice beside the grid
    attention_sharpen: float = 0.0  # decoder=attention: weight of each step's attention entropy, in [0, 10]
    batch_by_image: bool = False  # an image's captions side by side in a batch (its map is annotated once)
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
    precision: str = "fp32"  # fp32 | int8: the encoder the features are cached (and served) with
    evaluate_test: bool = True  # score the best checkpoint on the test split at the end
    zero_features: bool = False  # ablation: every image feature is zeros (what does the image add?)
    device: str | None = None  # None: cuda when available, else cpu
    num_workers: int = 0  # image-loading processes (feature caching and fine-tuning)
    threads: int | None = None  # torch CPU threads; None: every core, shared by the node's processes (auto_threads)
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):  # types first: the range checks below compare numbers
            problem = type_problem(f.name, f.type, getattr(self, f.name))
            if problem:
                raise SettingError(f"invalid training setting: {problem}", key=f.name)
        problem = self._problem()
        if problem:
            raise SettingError(f"invalid training setting: {problem}")

    def _problem(self) -> str | None:
        """The first thing wrong with these (well-typed) settings, or None."""
        for name, allowed in (
            ("decoder", DECODER_KINDS),
            ("cell", CELLS),
            ("fine_tune", FINE_TUNE),
            ("metric", METRICS),
            ("schedule", SCHEDULES),
            ("cache_key", CACHE_KEYS),
        ):
            if getattr(self, name) not in allowed:
                return f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
        for name in POSITIVE:
            if int(getattr(self, name)) < 1:
                return f"{name} must be >= 1"
        if self.threads is not None and self.threads < 1:
            return "threads must be >= 1"
        for name in ("warmup_steps", "patience", "num_workers"):
            if int(getattr(self, name)) < 0:
                return f"{name} must be >= 0"
        if not (self.lr > 0 and self.encoder_lr > 0):
            return "learning rates must be > 0"
        if not 0 <= self.dropout < 1 or not 0 <= self.label_smoothing < 1:
            return "dropout and label_smoothing must be in [0, 1)"
        if self.decoder == "attention" and self.fine_tune != "none":
            return "the attention decoder trains on cached feature maps; it cannot be combined with fine_tune"
        if self.attention_lambda < 0:
            return "attention_lambda must be >= 0"
        if not 0 <= self.attention_sharpen <= 10:
            return "attention_sharpen must be in [0, 10]"
        if self.precision not in PRECISIONS:
            return f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
        if self.precision == "int8" and self.fine_tune != "none":
            return "precision int8 trains on cached int8 features; it cannot be combined with fine_tune"
        if self.annotation_dim < 0:
            return "annotation_dim must be >= 0 (0: the CNN's channels as they are)"
        if self.zero_features and self.fine_tune != "none":
            return "zero_features is an ablation of cached features; it cannot be combined with fine_tune"
        if not 0 <= self.val_fraction < 1 or not 0 <= self.min_lr_ratio <= 1:
            return "val_fraction must be in [0, 1) and min_lr_ratio in [0, 1]"
        if self.grad_clip < 0 or self.weight_decay < 0:
            return "grad_clip and weight_decay must be >= 0"
        return None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)

    def decoder_config(self, vocab_size: int, feature_dim: int, max_length: int) -> DecoderConfig:
        if self.decoder == "attention":
            return AttentionConfig(
                **self._decoder_settings(vocab_size, feature_dim, max_length),
                attention_dim=self.attention_dim,
                doubly_stochastic=self.attention_lambda,
                annotation_dim=self.annotation_dim,
                sentinel=self.attention_sentinel,
                sharpen=self.attention_sharpen,
            )
        return DecoderConfig(**self._decoder_settings(vocab_size, feature_dim, max_length))

    def _decoder_settings(self, vocab_size: int, feature_dim: int, max_length: int) -> dict:
        return dict(
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


def auto_threads() -> int:
    """Torch CPU threads for a run that did not choose: every core, shared among this node's
    processes.

    Torch's own default (one thread per core, lowered by ``OMP_NUM_THREADS``) divided by the
    processes a torchrun launch starts on this machine (``LOCAL_WORLD_SIZE``), at least 1.
    The load average is deliberately not consulted: it is a moment's reading, and a run that
    picked one thread because another job was running kept that one thread for an hour
    after the job ended (docs/training.md, "Threads"). ``--threads`` overrides it.
    """
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, _TORCH_DEFAULT_THREADS // local)


def default_cache_dir() -> Path:
    """The feature cache folder: ``features/`` under :func:`captioner.cache.default_cache_dir`."""
    from captioner.cache import default_cache_dir as cache_root

    return cache_root() / "features"
