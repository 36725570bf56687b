"""``captioner calibrate``: fit a checkpoint's confidence calibration and domain statistics.

    captioner calibrate --checkpoint runs/scenes/best --data data/scenes
    captioner calibrate -c runs/scenes/best --data data/scenes --held-out val,test --plot reliability.png

Registered as the ``calibrate`` entry point of the ``captioner.commands`` group; a thin layer
over :func:`captioner.training.trust_fit.calibrate_checkpoint`.
"""

from __future__ import annotations

import argparse
import json

from captioner.cli_names import add_deprecated
from captioner.trust import DEFAULT_QUANTILE, DEFAULT_RANK, DEFAULT_STATISTIC, METHODS, STATISTICS

DESCRIPTION = """Fit the statistics that let a checkpoint say how far to trust its captions, and
write them into the checkpoint folder (trust.json, trust.safetensors):

  confidence   a logistic map from each caption's log-probability to the chance it is right,
               fitted on held-out captions (scene-correct on a scenes dataset, else an exact
               match of a reference)
  in_domain    the mean and shrinkage covariance of training features; the threshold is a
               quantile of held-out images' Mahalanobis distances

Training writes them at its end; use this verb for an older checkpoint or other data."""


def _quantile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"quantile must be a number from 0.5 to below 1, got {text!r}") from None
    if not 0.5 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"quantile must be a number from 0.5 to below 1, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 2 to 1000000, got {text!r}") from None
    if not 2 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be an integer from 2 to 1000000, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` verb."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit a checkpoint's confidence calibration and out-of-domain statistics",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", "-c", metavar="DIR", required=True, help="checkpoint folder to add them to")
    p.add_argument("--data", metavar="PATH", required=True, help="the dataset the checkpoint was trained on")
    p.add_argument("--format", default="auto", choices=("auto", "coco", "flickr", "karpathy", "jsonl", "csv"))
    p.add_argument(
        "--images-dir", dest="images", metavar="DIR", default=None, help="folder the image paths are relative to"
    )
    add_deprecated(p, "--images", "--images-dir", dest="images", metavar="DIR")
    p.add_argument("--held-out", default="val", metavar="SPLITS", help="comma-separated held-out splits (default: val)")
    p.add_argument(
        "--train-images",
        type=_count,
        default=2000,
        metavar="N",
        help="training images for the domain model (default: 2000)",
    )
    p.add_argument(
        "--quantile",
        type=_quantile,
        default=DEFAULT_QUANTILE,
        help=f"of held-out distances, where the out-of-domain threshold goes (default: {DEFAULT_QUANTILE})",
    )
    p.add_argument(
        "--rank", type=_count, default=DEFAULT_RANK, help=f"covariance directions kept (default: {DEFAULT_RANK})"
    )
    p.add_argument("--statistic", choices=STATISTICS, default=DEFAULT_STATISTIC, help="what confidence is a map of")
    p.add_argument("--method", choices=METHODS, default="platt", help="calibration curve (default: platt)")
    p.add_argument("--plot", metavar="PNG", default=None, help="also draw the held-out reliability diagram here")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .trust_fit import calibrate_checkpoint, plot_reliability, reliability_bins

    held_out = [s.strip() for s in args.held_out.split(",") if s.strip()]
    trust, confidence, right = calibrate_checkpoint(
        args.checkpoint,
        args.data,
        format=args.format,
        images_dir=args.images,
        held_out=held_out,
        train_images=args.train_images,
        quantile=args.quantile,
        rank=args.rank,
        statistic=args.statistic,
        method=args.method,
        device=args.device,
    )
    print(json.dumps(trust.describe(), indent=2))
    for row in reliability_bins(confidence, right):
        print(
            f"confidence {row['low']:.1f}-{row['high']:.1f}: {row['captions']:5d} captions, "
            f"mean confidence {row['confidence']:.3f}, right {row['right']:.3f}"
        )
    if args.plot:
        print(f"reliability diagram written to {plot_reliability(confidence, right, args.plot)}")
    print(f"trust statistics written to {args.checkpoint}")
    return 0
