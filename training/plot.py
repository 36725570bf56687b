"""Training curves as a PNG next to the checkpoints (matplotlib, headless Agg backend).

``plot_history(rows, "runs/x/curves.png")`` draws, per epoch: the train and validation
losses, the validation caption metrics (BLEU-4, CIDEr-D, scene accuracy; whichever the
rows have) with the best epoch marked, and the learning rate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

METRIC_LABELS = {"bleu_4": "BLEU-4", "scene_accuracy": "scene accuracy"}


def plot_history(
    rows: Sequence[dict], path: str | os.PathLike, metric: str | None = None, title: str | None = None
) -> Path:
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
    handles = []
    for key in ("bleu_4", "scene_accuracy"):  # both in [0, 1]
        ys = [r.get(key) for r in rows]
        if any(isinstance(y, (int, float)) for y in ys):
            handles += ax.plot(epochs, ys, marker="o", ms=3, label=METRIC_LABELS[key])
    ax.set_ylim(0, 1)
    ys = [r.get("cider_d") for r in rows]
    if any(isinstance(y, (int, float)) for y in ys):  # CIDEr-D is on a 0-10 scale: own axis
        twin = ax.twinx()
        handles += twin.plot(epochs, ys, marker="s", ms=3, ls="--", color="tab:red", label="CIDEr-D (right)")
        twin.set_ylim(bottom=0)
    best = [r["epoch"] for r in rows if r.get("best")]
    if best:
        handles.append(ax.axvline(best[-1], color="gray", ls=":", lw=1, label=f"best epoch ({best[-1]})"))
    ax.set_title(f"validation{f' (best by {metric})' if metric else ''}")
    ax.set_xlabel("epoch")
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8, loc="lower right")

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
