"""Training curves as a PNG next to the checkpoints (matplotlib, headless Agg backend).

``plot_history(rows, "runs/x/curves.png")`` draws, per epoch: the train and validation
losses, the validation caption metrics (BLEU-4, CIDEr-D, scene accuracy; whichever the
rows have) with the best epoch marked, and the learning rate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

METRIC_LABELS = {"bleu_4": "BLEU-4", "cider_d": "CIDEr-D", "scene_accuracy": "scene accuracy",
                 "bleu_1": "BLEU-1"}


def plot_history(rows: Sequence[dict], path: str | os.PathLike, metric: str | None = None,
                 title: str | None = None) -> Path:
    """Write the curves of the per-epoch log ``rows`` (as in log.jsonl) to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(epochs, ys, marker="o", ms=3, label=label)
    ax.set_title("loss (token cross-entropy)")
    ax.set_xlabel("epoch")
    ax.legend()

    ax = axes[1]
    for key, label in METRIC_LABELS.items():
        ys = [r.get(key) for r in rows]
        if key == "bleu_1" or not any(isinstance(y, (int, float)) for y in ys):
            continue
        ax.plot(epochs, ys, marker="o", ms=3, label=label)
    best = [r["epoch"] for r in rows if r.get("best")]
    if best:
        ax.axvline(best[-1], color="gray", ls="--", lw=1, label=f"best epoch ({best[-1]})")
    ax.set_title(f"validation metrics{f' (selected by {metric})' if metric else ''}")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)

    ax = axes[2]
    ax.plot(epochs, [r.get("lr") for r in rows], marker="o", ms=3)
    ax.set_title("learning rate (end of epoch)")
    ax.set_xlabel("epoch")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
