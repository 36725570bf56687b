"""Resume state: what ``OUT/last`` holds besides a loadable checkpoint, and reading it back.

``OUT/last`` is a normal checkpoint folder plus ``trainer_state.safetensors`` (the AdamW
moments and step counts, one tensor each) and ``trainer_state.json`` (the settings, the
optimizer's hyper-parameters, :class:`TrainerState` and the log rows so far). Nothing is
pickled. The random state at an epoch boundary is given by ``(seed, epoch)`` (see
``optim.epoch_seed``), so this is everything a resumed run needs to end with the weights
of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from captioner.errors import CaptionerError
from captioner.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

from .config import RESUME_OVERRIDABLE, TrainConfig

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
STATE_FORMAT = "captioner-trainer-state/1"
LAST = "last"


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


@dataclass
class SavedRun:
    """``OUT/last`` read back: the checkpoint, the trainer state, the optimizer and the log."""

    checkpoint: Checkpoint
    config: dict
    state: TrainerState
    optimizer: dict  # an optimizer state_dict, ready for load_state_dict
    history: list[dict]


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
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


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    """The inverse of :func:`flatten_optimizer`: an optimizer ``state_dict``."""
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


def save_last(
    out: Path,
    *,
    checkpoint: dict[str, Any],
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    history: list[dict],
) -> Path:
    """Write OUT/last atomically: a loadable checkpoint (``checkpoint`` holds the keyword
    arguments of ``save_checkpoint``) plus the trainer state, with the per-epoch log rows so
    a resumed run's log is complete whatever happened to log.jsonl."""
    tensors, opt_meta = flatten_optimizer(optimizer)
    record = {
        "format": STATE_FORMAT,
        "config": cfg.to_dict(),
        "trainer": asdict(state),
        "optimizer": opt_meta,
        "history": history,
    }

    def write_state(folder: Path) -> None:
        save_file(tensors or {"empty": torch.zeros(0)}, str(folder / STATE_TENSORS), metadata={"format": STATE_FORMAT})
        (folder / STATE_JSON).write_text(json.dumps(record, indent=1), encoding="utf-8")

    return save_checkpoint(out / LAST, **checkpoint, extra_files=write_state)


def read_last(out: Path) -> tuple[dict, dict[str, Tensor]]:
    """(trainer_state.json, trainer_state.safetensors) of OUT/last."""
    last = out / LAST
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
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CaptionerError(f"{last / STATE_JSON}: unsupported trainer state format {found!r}")
    return meta, tensors


def load_run(out: Path) -> SavedRun:
    """Everything ``--resume`` continues from; a clear CaptionerError when any part is unusable."""
    meta, tensors = read_last(out)
    checkpoint = load_checkpoint(out / LAST)  # weights, vocabulary; safetensors and JSON only
    state = TrainerState(**meta["trainer"])
    rows = [r for r in meta.get("history") or [] if r.get("epoch", 0) <= state.epoch]
    return SavedRun(checkpoint, meta["config"], state, unflatten_optimizer(tensors, meta["optimizer"]), rows)


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
