"""The run's record: ``OUT/log.jsonl`` and ``OUT/log.csv`` (one row per epoch), ``OUT/curves.png``,
``OUT/results.json``, and the metadata written into each checkpoint.

Every file is replaced atomically (a temporary sibling, fsync, rename), so a crash leaves
the old file or the new one, never a torn one. The log is written before ``OUT/last`` so a
resumable state never points at epochs missing from the log.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from captioner.fsio import atomic_write

from .config import TrainConfig
from .resume import TrainerState

RUN_CONFIG = "config.json"  # OUT/config.json: the run's settings (not a checkpoint file)
LOG_JSONL = "log.jsonl"
LOG_CSV = "log.csv"
CURVES = "curves.png"
RESULTS = "results.json"
SKIPPED = "skipped_images.json"
TEST_CAPTIONS = "test_captions.jsonl"


def replace_atomically(path: Path, write: Callable[[Any], object], **open_kw: Any) -> None:
    """Write ``path`` (text) through a temporary sibling renamed into place (``captioner.fsio``)."""
    atomic_write(path, write, binary=False, **open_kw)


def write_json(path: Path, data: Any) -> None:
    replace_atomically(path, lambda f: f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n"))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    replace_atomically(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_log(out: Path, history: list[dict]) -> None:
    """log.jsonl and log.csv (the scalar columns), each replaced atomically."""
    write_jsonl(out / LOG_JSONL, history)
    keys: list[str] = []
    for row in history:
        keys.extend(k for k, v in row.items() if k not in keys and not isinstance(v, (dict, list)))

    def write_csv(f: Any) -> None:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)

    replace_atomically(out / LOG_CSV, write_csv, newline="")


def read_log(out: Path, upto_epoch: int) -> list[dict]:
    """The rows of log.jsonl up to ``upto_epoch``; torn lines are skipped."""
    path = out / LOG_JSONL
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


def plot(out: Path, history: list[dict], metric: str) -> None:
    from .plot import plot_history

    plot_history(history, out / CURVES, metric=metric)


def run_name(cfg: TrainConfig) -> str:
    """The name of a run, from its folder: what a trained checkpoint is called (model_id)."""
    return Path(cfg.out).resolve().name or "run"


def environment() -> dict:
    import captioner

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "captioner": captioner.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def checkpoint_metadata(
    cfg: TrainConfig, data_info: dict, row: dict, metric: str, feature_seconds: float, train_seconds: float
) -> dict:
    """The metadata.json of the checkpoints saved after the epoch that logged ``row``."""
    return {
        "model_id": run_name(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": data_info,
        "epoch": row["epoch"],
        "selected_by": metric,
        "val": {k: v for k, v in row.items() if k != "best"},
        "timing": {
            "feature_seconds": round(feature_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(feature_seconds + train_seconds, 1),
        },
        "train_config": cfg.to_dict(),
        "environment": environment(),
    }


def run_summary(state: TrainerState, feature_seconds: float, processes: int) -> dict:
    """How the run went: for results.json and the best checkpoint's metadata."""
    return {
        "command": command_line(),
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "feature_seconds": round(feature_seconds, 1),
        "train_seconds": round(state.elapsed, 1),
        "total_seconds": round(feature_seconds + state.elapsed, 1),
        "processes": processes,
        "load_average_at_end": list(os.getloadavg()),
    }


def command_line() -> str:
    """How this process was started, e.g. ``captioner train --data data/scenes ...``."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog == "cli_train.py" or prog.endswith("-m"):
        prog = "python -m captioner.training.cli_train"
    return " ".join([prog, *sys.argv[1:]])


def format_metrics(metrics: dict) -> str:
    """``bleu_4 0.5000 cider_d 2.0000 scene_accuracy 0.3000`` (those the dict has)."""
    return " ".join(f"{k} {metrics[k]:.4f}" for k in ("bleu_4", "cider_d", "scene_accuracy") if k in metrics)


#: A run on the built-in scenes data that learns something in about a minute on a 2-core CPU
#: (test scene accuracy about 0.25, BLEU-4 about 0.57; docs/training.md).
QUICK_RECIPE = (
    "captioner data scenes --out data/scenes --train 1000 --val 100 --test 200 && "
    "captioner train --data data/scenes --out runs/scenes --epochs 8 "
    "--hidden-dim 256 --embed-dim 128 --img-proj-dim 128 --lr 3e-3"
)
WEAK_SCENE_ACCURACY = 0.1  # below this, a scenes model has learned next to nothing
WEAK_CIDER_D = 0.1  # the same for any other dataset


def weak_result_hint(metrics: dict, train_images: int, epochs: int) -> str | None:
    """What usually helps, when ``metrics`` (test, else best validation) are far below a
    sensible result; None when they are not."""
    if "scene_accuracy" in metrics:
        weak, shown = metrics["scene_accuracy"] < WEAK_SCENE_ACCURACY, "scene accuracy"
        value = f"{100 * metrics['scene_accuracy']:.1f} %"
    elif "cider_d" in metrics:
        weak, shown, value = metrics["cider_d"] < WEAK_CIDER_D, "CIDEr-D", f"{metrics['cider_d']:.3f}"
    else:
        return None
    if not weak:
        return None
    return (
        f"note: this model learned little ({shown} {value} after {epochs} epoch(s) on {train_images} training "
        "images). What usually helps: more images (a thousand or more), more epochs (8 or more), and on small "
        "data a smaller decoder (--hidden-dim 256 --embed-dim 128 --img-proj-dim 128). "
        f"A run that learns in about a minute:\n  {QUICK_RECIPE}"
    )
