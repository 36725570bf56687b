"""The training loop: cached CNN features -> a caption decoder trained with teacher forcing.

    from captioner.training.train import TrainConfig, train
    result = train(TrainConfig(data="data/scenes", out="runs/scenes"))
    result.best_path            # runs/scenes/best: a checkpoint Captioner.load() reads

One run, start to end, and where each part lives:

1. **Settings** - :class:`TrainConfig` (``config.py``), checked when built.
2. **Data** - any supported dataset (``captioner.training.datasets.load_dataset``) split
   into train / val / test; the vocabulary is built from the *train* split's captions
   (``splits.py``).
3. **Features** - the frozen encoder runs once per image into the feature cache; with
   ``fine_tune`` != "none" the images are read and encoded at every step instead
   (``inputs.py``). Unreadable images are reported by name and their captions skipped.
4. **Training** - teacher forcing over every (image, caption) pair, AdamW with weight decay
   on matrices only, linear warm-up then cosine decay, gradient-norm clipping, dropout,
   optional label smoothing, bf16/fp16 autocast on CUDA (``optim.py``, ``trainer.py``).
   The loss of a step is the summed token cross-entropy divided by the number of target
   tokens in the *global* batch, so N processes of batch B/N compute the update one
   process of batch B does (``distributed.py``).
5. **Validation** every epoch - validation loss, greedy captions through
   ``Captioner.generate``, BLEU-1..4, CIDEr-D and the scene accuracy on a scenes dataset
   (``validation.py``). The ``metric`` picks the ``best`` checkpoint and drives early
   stopping (``patience`` epochs without improvement).
6. **Checkpoints** - ``OUT/best`` (the best epoch) and ``OUT/last`` (every epoch, with the
   optimizer moments, step, schedule, scaler and early-stopping state: no pickle), so
   ``resume=True`` continues an interrupted run and ends with the same weights as an
   uninterrupted one (``resume.py``).
7. **Record** - ``OUT/log.jsonl`` / ``OUT/log.csv`` get one row per epoch, ``OUT/curves.png``
   the curves; at the end the best checkpoint is scored on the test split and the numbers
   go into its ``metadata.json`` and ``OUT/results.json`` (``runlog.py``, ``plot.py``).

Randomness: the weights are initialised from ``seed``; at the start of every epoch each
process re-seeds torch (dropout) from ``(seed, epoch, rank)`` and the sampler shuffles
with ``seed + epoch``. The random state at an epoch boundary is therefore fully given by
``(seed, epoch)``, which is what the ``last`` checkpoint stores.

This module is the public face of training: the names below are imported from here.
"""

from __future__ import annotations

from collections.abc import Callable

from . import distributed
from .config import FINE_TUNE, METRICS, RESUME_OVERRIDABLE, SCHEDULES, TrainConfig, auto_threads, default_cache_dir
from .distributed import DistContext
from .optim import TrainingModel, build_optimizer, encoder_units, epoch_seed, lr_factor, set_trainable_encoder
from .resume import (
    STATE_FORMAT,
    STATE_JSON,
    STATE_TENSORS,
    TrainerState,
    check_resume_config,
    flatten_optimizer,
    load_run,
    read_last,
    resume_config,
    save_last,
    unflatten_optimizer,
)
from .splits import Pairs, SplitData, encode_captions, load_splits, make_pairs
from .trainer import Trainer, TrainResult
from .validation import caption_features, caption_metrics, teacher_forced_loss

__all__ = [
    "FINE_TUNE",
    "METRICS",
    "RESUME_OVERRIDABLE",
    "SCHEDULES",
    "STATE_FORMAT",
    "STATE_JSON",
    "STATE_TENSORS",
    "Pairs",
    "SplitData",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerState",
    "TrainingModel",
    "auto_threads",
    "build_optimizer",
    "caption_features",
    "caption_metrics",
    "check_resume_config",
    "default_cache_dir",
    "encode_captions",
    "encoder_units",
    "epoch_seed",
    "flatten_optimizer",
    "load_run",
    "load_splits",
    "lr_factor",
    "make_pairs",
    "read_last",
    "resume_config",
    "save_last",
    "set_trainable_encoder",
    "teacher_forced_loss",
    "train",
    "unflatten_optimizer",
]


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    ctx: DistContext | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a caption model as ``cfg`` says (see :class:`Trainer`).

    ``resume=True`` continues the run in ``cfg.out`` from its ``last`` checkpoint.
    ``on_epoch_end(row)`` is called (on every process) after each epoch with the log row.
    """
    own_ctx = ctx is None
    context = ctx or distributed.setup(cfg.device)
    try:
        return Trainer(cfg, context, resume, on_epoch_end).run()
    finally:
        if own_ctx:
            distributed.cleanup(context)
