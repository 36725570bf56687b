"""Training curves as a PNG next to the checkpoints (matplotlib, headless Agg backend).

``plot_history(rows, "runs/x/curves.png")`` draws, per epoch: the train and validation
losses, the validation caption metrics (BLEU-4, CIDEr-D, scene accuracy; whichever the
rows have) with the best epoch marked, and the learning rate. Epoch ticks are whole
numbers and every axis starts at 0, so a run of one or two epochs plots as clearly as a
long one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captioner.fsio import atomic_write

METRIC_LABELS = {"bleu_4": "BLEU-4", "scene_accuracy": "scene accuracy"}


def _numbers(rows: Sequence[dict], key: str) -> list[Any]:
    return [r.get(key) if isinstance(r.get(key), (int, float)) else None for r in rows]


def _epoch_axis(ax: Any, epochs: list[int]) -> None:
    """Whole-number epoch ticks (every epoch when there are few), a margin of half an epoch."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def _from_zero(ax: Any, values: list[Any], floor: float) -> None:
    """y from 0 to a little above the largest value (at least ``floor``), no offset notation."""
    top = max((v for v in values if v is not None), default=0.0)
    ax.set_ylim(0, max(top * 1.1, floor))
    ax.ticklabel_format(axis="y", useOffset=False)


def history_figure(rows: Sequence[dict], metric: str | None = None, title: str | None = None) -> Any:
    """The matplotlib figure of the per-epoch log ``rows`` (as in log.jsonl)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    losses: list[Any] = []
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ys = _numbers(rows, key)
        if any(y is not None for y in ys):
            ax.plot(epochs, ys, marker="o", ms=3, label=label)
            losses += ys
    ax.set_title("loss (token cross-entropy)")
    _epoch_axis(ax, epochs)
    _from_zero(ax, losses, 0.1)
    ax.legend()

    ax = axes[1]
    handles = []
    for key in ("bleu_4", "scene_accuracy"):  # both in [0, 1]
        ys = _numbers(rows, key)
        if any(y is not None for y in ys):
            handles += ax.plot(epochs, ys, marker="o", ms=3, label=METRIC_LABELS[key])
    ax.set_ylim(0, 1)
    ys = _numbers(rows, "cider_d")
    if any(y is not None for y in ys):  # CIDEr-D is on a 0-10 scale: own axis
        twin = ax.twinx()
        handles += twin.plot(epochs, ys, marker="s", ms=3, ls="--", color="tab:red", label="CIDEr-D (right)")
        _from_zero(twin, ys, 0.1)
    best = [r["epoch"] for r in rows if r.get("best")]
    if best:
        handles.append(ax.axvline(best[-1], color="gray", ls=":", lw=1, label=f"best epoch ({best[-1]})"))
    ax.set_title(f"validation{f' (best by {metric})' if metric else ''}")
    _epoch_axis(ax, epochs)
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8, loc="lower right")

    ax = axes[2]
    lrs = _numbers(rows, "lr")
    ax.plot(epochs, lrs, marker="o", ms=3)
    ax.set_title("learning rate (end of epoch)")
    _epoch_axis(ax, epochs)
    _from_zero(ax, lrs, 1e-6)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0), useOffset=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(
    rows: Sequence[dict], path: str | os.PathLike, metric: str | None = None, title: str | None = None
) -> Path:
    """Write the curves of the per-epoch log ``rows`` (as in log.jsonl) to ``path``."""
    import matplotlib.pyplot as plt

    fig = history_figure(rows, metric, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=90, format="png"))
    finally:
        plt.close(fig)
    return path
