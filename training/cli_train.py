"""``captioner train``: train a caption model on any supported dataset.

    captioner train --data data/scenes --out runs/scenes
    captioner train --data data/scenes --out runs/scenes --resume        # after an interruption
    captioner train --config run.json --epochs 40                        # flags override the file
    torchrun --nproc_per_node=2 -m captioner.training.cli_train --data data/scenes --out runs/ddp

Registered as the ``train`` entry point of the ``captioner.commands`` group. Every flag is
one field of :class:`captioner.training.config.TrainConfig`; a JSON ``--config`` file may set any of
them, and flags given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from captioner.cli_names import add_deprecated
from captioner.errors import CaptionerError

from .config import CACHE_KEYS, DECODER_KINDS, FINE_TUNE, METRICS, SCHEDULES, SettingError, TrainConfig

DESCRIPTION = """Train a caption decoder (and optionally fine-tune the CNN) on a caption dataset.

The frozen CNN encodes every image once into a feature cache on disk; the decoder then
trains with teacher forcing from the cached features. After every epoch the run is
validated (greedy captions; BLEU-4, CIDEr-D and, on a scenes dataset, scene accuracy),
OUT/best keeps the best epoch, OUT/last the latest one with everything --resume needs,
and OUT/log.jsonl, OUT/log.csv and OUT/curves.png show the curves. At the end the best
checkpoint is scored on the test split; use it with `captioner caption -c OUT/best`.

Under `torchrun --nproc_per_node=N` the same command trains with DistributedDataParallel
(gloo on CPU, nccl on CUDA); --batch-size is the global batch."""

EPILOG = """examples:
  captioner data scenes --out data/scenes
  captioner train --data data/scenes --out runs/scenes
  captioner train --data captions.jsonl --min-count 5 --out runs/mine --metric cider_d
  captioner train --data coco --out runs/ft --fine-tune last --encoder-lr 1e-4
  captioner train --out runs/scenes --resume --epochs 40"""

HELP: dict[str, str] = {
    "data": "dataset: a folder (e.g. from `captioner data scenes`) or a caption file (COCO JSON, Flickr token "
    "file, Karpathy JSON, JSONL, CSV)",
    "format": "dataset format (default: auto)",
    "images_dir": "folder the image file names are relative to (default: next to the caption file)",
    "out": "run folder for best/, last/, logs and curves (default: runs/train)",
    "min_count": "words used fewer times in the train captions become <unk> (default: 1)",
    "max_words": "cut longer training captions to this many words (default: 30)",
    "val_fraction": "fraction of train held out for validation when the dataset has no val split (default: 0.05)",
    "max_val_images": "validate on the first N val images only (default: all)",
    "encoder": "CNN encoder (see `captioner encoders`; default: efficientnet_lite0)",
    "encoder_weights": "pretrained, random, or a state-dict file (default: pretrained)",
    "cache_dir": "feature cache folder (default: $CAPTIONER_CACHE or ~/.cache/captioner/features)",
    "cache_key": "how a cached feature is tied to its image: stat (path, size, mtime; default) or content "
    "(SHA-256 of the bytes)",
    "encode_batch_size": "images per encoder call while caching; small is fastest on CPUs (default: 4)",
    "fine_tune": "none: train the decoder on cached features (default); last: also train the CNN's last "
    "--fine-tune-blocks blocks; all: the whole CNN. Fine-tuning reads every image every epoch",
    "fine_tune_blocks": "with --fine-tune last: number of final CNN blocks to train (default: 2)",
    "encoder_lr": "learning rate of the CNN when fine-tuning (default: 1e-4)",
    "decoder": "pooled: the classic decoder on the pooled CNN feature (default); attention: soft attention "
    "over the CNN's feature map at every word (Show, Attend and Tell; caches the maps, 125 KB per image)",
    "attention_dim": "with --decoder attention: hidden size of the attention MLP (default: 256)",
    "attention_lambda": "with --decoder attention: weight of the doubly stochastic regulariser (default: 0.02)",
    "precision": "fp32 (default) or int8: cache the features with the int8 ONNX Runtime encoder, "
    "calibrated on the first 128 training images, so the decoder learns the features it is served; "
    "the checkpoint then serves int8 by default",
    "attention_sentinel": "with --decoder attention: let each step put attention mass on a learned 'nowhere' "
    "beside the grid, so the context's size can say how much of a kind there is (default: no)",
    "attention_sharpen": "with --decoder attention: weight of each step's attention entropy in the loss, "
    "so each word looks at few locations; 0 to 10 (default: 0)",
    "batch_by_image": "put every caption of an image in the same batch, side by side (images shuffled), so the "
    "attention decoder annotates each map once per batch instead of once per caption (default: no)",
    "annotation_dim": "with --decoder attention: size of the learned annotation vector of each location, "
    "relu(W_p f_i), that attention and the initial state read (default: 512; 0: the CNN's channels as they are)",
    "cell": "recurrent cell: lstm (default), gru or rnn (tanh)",
    "embed_dim": "word embedding size (default: 256)",
    "hidden_dim": "recurrent state size (default: 512)",
    "img_proj_dim": "size of the projected image feature W_ih f fed at every step (default: 256)",
    "num_layers": "stacked recurrent layers (default: 1)",
    "dropout": "dropout on embeddings, image projection and outputs (default: 0.1)",
    "init_state": "compute the initial state from the image feature (default: yes)",
    "epochs": "maximum number of epochs (default: 20)",
    "batch_size": "global batch of (image, caption) pairs per step (default: 128)",
    "lr": "peak learning rate of AdamW (default: 2e-3)",
    "weight_decay": "AdamW weight decay on weight matrices (default: 0.01)",
    "schedule": "learning rate after warm-up: cosine decay (default) or constant",
    "warmup_steps": "steps of linear learning-rate warm-up, at most a tenth of the run's steps (default: 100)",
    "min_lr_ratio": "the cosine ends at lr x this (default: 0.05)",
    "grad_clip": "clip the global gradient norm to this; 0 disables (default: 1.0)",
    "label_smoothing": "label smoothing of the cross-entropy (default: 0)",
    "amp": "mixed precision on CUDA: bf16 when supported, else fp16 with loss scaling (default: yes)",
    "seed": "random seed of initialisation, shuffling and dropout (default: 0)",
    "metric": "validation metric for the best checkpoint and early stopping (default: auto = scene_accuracy "
    "on a scenes dataset, else cider_d)",
    "patience": "stop after this many epochs without a better validation metric; 0 never stops (default: 5)",
    "save_fp16": "store the best checkpoint's weights in float16 (half the size)",
    "evaluate_test": "score the best checkpoint on the test split at the end (default: yes)",
    "zero_features": "ablation: train and evaluate with all-zero image features, to measure what the image adds",
    "device": "cpu, cuda or cuda:N (default: cuda when available)",
    "num_workers": "processes reading and decoding images for the feature cache and fine-tuning "
    "(setting num_workers; default: 0, in the main process)",
    "threads": "torch CPU threads (default: one per core, divided among the processes of a torchrun launch "
    "on this machine; OMP_NUM_THREADS lowers it)",
    "progress": "no progress bars (setting progress: false)",
    "plot": "write OUT/curves.png after every epoch (default: yes)",
}

CHOICES: dict[str, tuple[str, ...]] = {
    "fine_tune": FINE_TUNE,
    "decoder": DECODER_KINDS,
    "metric": METRICS,
    "schedule": SCHEDULES,
    "cache_key": CACHE_KEYS,
    "cell": ("lstm", "gru", "rnn"),
    "format": ("auto", "coco", "flickr", "karpathy", "jsonl", "csv"),
}
SHORT = {"data": ["-d"], "out": ["-o"]}
#: Flags named apart from their setting, so every verb says the same thing the same way
#: (captioner.cli_names); the old spelling still works for a release.
FLAG_NAMES = {"num_workers": "--workers"}
OLD_FLAGS = {"num_workers": "--num-workers"}


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type: "invalid int value"
    return parse


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, defaulting to 'not given' so a --config file can fill it."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of settings (field names as below, with underscores); flags given here override it",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (same settings; only "
        "--epochs, --patience, --device and output options may change)",
    )
    p.add_argument("--print-config", action="store_true", help="print the effective settings as JSON and exit")
    for f in fields(TrainConfig):
        flag = FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=HELP.get(f.name, ""))
        if f.name == "progress":  # --quiet, as in every verb (captioner.cli_names)
            p.add_argument("--quiet", "-q", action="store_false", **kw)
            add_deprecated(p, "--no-progress", "--quiet", action="store_false", dest=f.name, default=argparse.SUPPRESS)
            add_deprecated(p, "--progress", "--quiet", action="store_true", dest=f.name, default=argparse.SUPPRESS)
            continue
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        base: Callable[[str], Any] = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], str)
        if "None" in str(f.type):
            base = _optional(base)
        if f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        p.add_argument(
            flag,
            *SHORT.get(f.name, []),
            type=base,
            metavar=None if f.name in CHOICES else f.name.split("_")[-1].upper(),
            **kw,
        )
        if f.name in OLD_FLAGS:
            add_deprecated(p, OLD_FLAGS[f.name], flag, type=base, dest=f.name, default=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- --config file <- flags."""
    values: dict = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CaptionerError(f"{path}: config file not found") from None
        except (OSError, ValueError) as e:
            raise CaptionerError(f"{path}: not a readable JSON config ({e})") from None
        if not isinstance(values, dict):
            raise CaptionerError(f"{path}: the config must be a JSON object of settings")
    names = {f.name for f in fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    from_file = set(values) - set(flags)
    values.update(flags)
    try:
        return TrainConfig.from_dict(values)
    except SettingError as e:
        if e.key in from_file:  # say where the wrong value is
            raise SettingError(f"{e} (in {args.config})", key=e.key) from None
        raise


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``captioner train``; a setting out of range is one line and exit status 2."""
    try:
        cfg = _config(args)
    except SettingError as e:
        print(f"captioner train: error: {e} (see captioner train --help)", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    return _run(cfg, args.resume)


def _config(args: argparse.Namespace) -> TrainConfig:
    if args.resume:
        from .train import resume_config

        names = {f.name for f in fields(TrainConfig)}
        given = {k: v for k, v in vars(args).items() if k in names and k != "out"}
        if getattr(args, "config", None):
            raise CaptionerError("--resume reads the settings saved in OUT/last; do not pass --config")
        return resume_config(getattr(args, "out", TrainConfig.out), **given)
    return config_from_args(args)


def _run(cfg: TrainConfig, resume: bool) -> int:
    from .train import train

    if not cfg.data:
        raise CaptionerError("pass --data DATASET (for example a folder made by `captioner data scenes`)")
    result = train(cfg, resume=resume)
    if not result.is_main:
        return 0
    if result.best_path.exists():
        print(
            f"best checkpoint: {result.best_path} (epoch {result.best_epoch}); "
            f"features {result.feature_seconds:.0f}s + training {result.train_seconds:.0f}s"
        )
    if result.test_metrics:  # printed here only: the trainer's log does not repeat it
        shown = {k: round(v, 4) for k, v in result.test_metrics.items() if isinstance(v, float)}
        print(f"test (best checkpoint, epoch {result.best_epoch}): " + json.dumps(shown))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` verb to the ``captioner`` command line."""
    p = subparsers.add_parser(
        "train",
        help="train a caption model (cached features, resumable, torchrun-ready)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m captioner.training.cli_train`` (what torchrun launches)."""
    from captioner.cli import Parser  # one-line argument errors, exit status 2

    parser = Parser(
        prog="captioner train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_train(args)
    except CaptionerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
