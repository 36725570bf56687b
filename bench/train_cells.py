"""Compare recurrent cells (lstm, gru, rnn) - and a decoder that never sees the image - on
the same cached features with the same settings.

    python bench/train_cells.py --data data/scenes --out runs/cells
    python bench/train_cells.py --data data/scenes --out runs/cells --cells lstm,gru --no-blind

Each variant is a full ``captioner.training.train.train`` run with the shipped model's settings
(``weights/default/metadata.json``'s ``train_config`` when present) and only ``cell``
changed; ``blind`` is the LSTM trained and tested on all-zero features, the language-only
baseline that shows how much of the score comes from the image. The feature cache is
built by the first run and reused by the others, so the times compare training alone.
Writes ``bench/results/train_cells.json`` and prints a Markdown table of held-out test
metrics (BLEU-4 and CIDEr-D against all references, scene accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.training.train import TrainConfig, train  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def base_config(args: argparse.Namespace) -> dict:
    """The shipped model's training settings, else the defaults, with this run's data/out/cache."""
    values = {}
    meta = ROOT / "weights" / "default" / "metadata.json"
    if meta.exists() and not args.defaults:
        values = dict(json.loads(meta.read_text()).get("train_config", {}))
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in values.items() if k in known}
    values.update(data=args.data, progress=False, plot=True, save_fp16=False, evaluate_test=True)
    if args.cache_dir:
        values["cache_dir"] = args.cache_dir
    if args.epochs:
        values["epochs"] = args.epochs
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="scenes dataset folder (from `captioner data scenes`)")
    p.add_argument("--out", default="runs/cells", help="parent folder of the runs (default: runs/cells)")
    p.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated cells (default: lstm,gru,rnn)")
    p.add_argument("--no-blind", dest="blind", action="store_false", help="skip the zero-feature baseline")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: the training default)")
    p.add_argument("--defaults", action="store_true", help="use TrainConfig defaults, not the shipped settings")
    args = p.parse_args(argv)

    base = base_config(args)
    variants = [(c, dict(base, cell=c)) for c in args.cells.split(",") if c]
    if args.blind:
        variants.append(("blind (lstm, zero features)", dict(base, cell="lstm", zero_features=True)))
    rows = []
    load_start = os.getloadavg()
    for name, values in variants:
        out = Path(args.out) / name.split(" ")[0]
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        result = train(TrainConfig.from_dict(dict(values, out=str(out))))
        wall = time.perf_counter() - t0
        params = sum(
            v.numel()
            for v in __import__("safetensors.torch", fromlist=["load_file"])
            .load_file(str(out / "best" / "model.safetensors"))
            .values()
        )
        t = result.test_metrics or {}
        rows.append(
            {
                "variant": name,
                "cell": values["cell"],
                "params": params,
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "train_seconds": round(result.train_seconds, 1),
                "wall_seconds": round(wall, 1),
                "test_scene_accuracy": t.get("scene_accuracy"),
                "test_bleu_4": t.get("bleu_4"),
                "test_cider_d": t.get("cider_d"),
                "val_scene_accuracy": result.best_metrics.get("scene_accuracy"),
                "val_bleu_4": result.best_metrics.get("bleu_4"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "data": args.data,
        "settings": {k: v for k, v in base.items() if k not in ("progress", "plot")},
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    (RESULTS / "train_cells.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        "\n| variant | decoder params | best epoch / run | train time | test scene acc. | test BLEU-4 | test CIDEr-D |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        fmt = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
        print(
            f"| {r['variant']} | {r['params'] / 1e6:.2f} M | {r['best_epoch']} / {r['epochs_run']} | "
            f"{r['train_seconds']:.0f} s | {fmt(r['test_scene_accuracy'])} | {fmt(r['test_bleu_4'])} | "
            f"{fmt(r['test_cider_d'])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
