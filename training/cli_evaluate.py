"""The ``captioner evaluate`` verb (a ``captioner.commands`` entry point).

Thin layer over :mod:`captioner.training.evaluate`: parse, load, call, print the table, write the
report.
"""

from __future__ import annotations

import argparse
import sys

from captioner.errors import CaptionerError
from captioner.metrics import METRIC_GROUPS

EPILOG = """examples:
  captioner evaluate --checkpoint runs/scenes/best --data data/scenes --split test --out report.json
  captioner evaluate --checkpoint runs/coco/best --data dataset_coco.json --images coco/ --beam-size 3
  captioner evaluate --predictions results.json --references annotations/captions_val2014.json
  captioner evaluate --predictions captions.jsonl --references data/scenes --split test

predictions files:
  COCO results JSON    [{"image_id": 42, "caption": "a dog on the grass"}, ...]
  JSONL                {"file": "test/000001.jpg", "caption": "..."} per line (captioner caption DIR --out)
  CSV                  file,caption[,score] with a header
A prediction matches a reference image by id, else by the longest tail of its path that
names a single image (so "000001.jpg" works when it is unique).

metrics: BLEU-1..4, CIDEr-D, ROUGE-L (pure Python, same numbers as coco-caption),
METEOR and SPICE (Java; skipped with the reason when they cannot run), and scene
accuracy when the references are a built-in scenes dataset."""


def _metric_list(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRIC_GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {unknown or text!r}; choose from {', '.join(METRIC_GROUPS)}"
        )
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` verb."""
    from captioner.cli import add_generation_options, add_model_options

    p = subparsers.add_parser(
        "evaluate",
        help="score captions against references (BLEU, CIDEr-D, ROUGE-L, METEOR, SPICE, scene accuracy)",
        description="Caption a dataset split with a checkpoint and score it, or score the captions of any system "
        "(--predictions). Prints a table of metrics and writes a JSON report with every image's caption, "
        "references and scores, and the worst examples by CIDEr-D.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("what to score")
    src.add_argument(
        "--data",
        "--references",
        dest="data",
        metavar="PATH",
        required=True,
        help="reference captions: a dataset folder or caption file in any supported format "
        "(COCO, Flickr, Karpathy, JSONL, CSV)",
    )
    src.add_argument(
        "--predictions",
        "-p",
        metavar="FILE",
        default=None,
        help="score these captions instead of running a model (COCO results JSON, JSONL or CSV)",
    )
    src.add_argument(
        "--split",
        default=None,
        help="which split to evaluate (default: test when running a model; all splits with --predictions)",
    )
    src.add_argument(
        "--format",
        default="auto",
        choices=("auto", "coco", "flickr", "karpathy", "jsonl", "csv"),
        help="format of --data (default: auto-detect)",
    )
    src.add_argument(
        "--images",
        metavar="DIR",
        default=None,
        help="folder the dataset's image paths are relative to (default: found from --data)",
    )
    src.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="caption only the first N images of the split (a quick check of a model)",
    )
    add_model_options(p)
    add_generation_options(p)
    run = p.add_argument_group("running the model")
    run.add_argument(
        "--batch-size", "-b", type=int, default=32, metavar="B", help="images per model call (default: 32)"
    )
    run.add_argument(
        "--workers",
        "-w",
        type=int,
        default=2,
        metavar="W",
        help="threads decoding images ahead of the model (default: 2)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--metrics",
        type=_metric_list,
        default=list(METRIC_GROUPS),
        metavar="LIST",
        help=f"comma-separated metric groups (default: {','.join(METRIC_GROUPS)})",
    )
    out.add_argument("--out", "-o", metavar="FILE", default=None, help="write the JSON report here")
    out.add_argument(
        "--worst", type=int, default=10, metavar="K", help="worst examples kept in the report (default: 10)"
    )
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import evaluate as ev

    if args.predictions is not None and args.checkpoint is not None:
        raise CaptionerError(
            "give either --checkpoint (caption the split with a model) or --predictions "
            "(score existing captions), not both"
        )
    if args.limit is not None and args.limit < 1:
        raise CaptionerError("--limit must be at least 1")
    if args.predictions is not None:
        refs = ev.load_references(
            args.data, format=args.format, images_dir=args.images, split=args.split, check_files=False
        )
        report = ev.evaluate_predictions(args.predictions, refs, metrics=args.metrics, worst_k=args.worst)
    else:
        from captioner.model import Captioner

        refs = ev.load_references(args.data, format=args.format, images_dir=args.images, split=args.split or "test")
        if args.limit is not None:
            refs.items = refs.items[: args.limit]
        model = Captioner.load(args.checkpoint, device=args.device)
        report = ev.evaluate_model(
            model,
            refs,
            metrics=args.metrics,
            batch_size=args.batch_size,
            workers=args.workers,
            beam_size=args.beam_size,
            max_length=args.max_length,
            length_penalty=args.length_penalty,
            worst_k=args.worst,
            progress=False if args.quiet else None,
        )
    print(ev.format_table(report))
    if args.out:
        path = ev.write_report(report, args.out)
        print(f"report written to {path}", file=sys.stderr)
    return 0
