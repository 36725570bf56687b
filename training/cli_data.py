"""``captioner data``: make the built-in scenes dataset and inspect caption datasets.

    captioner data scenes --out data/scenes --train 10000 --val 1000 --test 1000 --seed 0
    captioner data stats data/scenes
    captioner data stats Flickr8k.token.txt --images-dir Flicker8k_Dataset
    captioner data preview --out docs/scenes_grid.png

Registered as the ``data`` entry point of the ``captioner.commands`` group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from captioner.cli_names import add_deprecated
from captioner.errors import CaptionerError

DESCRIPTION = """Datasets for training and evaluation: render the built-in scenes dataset, or
inspect a caption dataset in any supported format.

examples:
  captioner data scenes --out data/scenes --train 10000 --val 1000 --test 1000
  captioner data stats data/scenes
  captioner data stats Flickr8k.token.txt --images-dir Flicker8k_Dataset
  captioner data stats dataset_coco.json --images-dir coco --split test
  captioner data preview --out docs/scenes_grid.png"""


def _positive_or_zero(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb and its actions to the ``captioner`` command line."""
    data = subparsers.add_parser(
        "data",
        help="make the built-in scenes dataset; statistics of caption datasets",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = data.add_subparsers(dest="data_action", metavar="ACTION")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = actions.add_parser(
        "scenes",
        help="render the built-in scenes dataset",
        description="Render a captioned dataset of everyday objects (40 kinds, 1-3 of each, 1-2 kinds per "
        "image) on coloured backgrounds, with five reference captions and a ground truth per image. "
        "It is written in the COCO captions format (captions_<split>.json + images/), so `captioner train "
        "--data OUT` reads it like any COCO dataset, and scenes_<split>.json feeds the scene-accuracy "
        "metric. The same seed and split sizes always give the same dataset, whatever --workers.",
    )
    p.add_argument(
        "--out",
        "-o",
        required=True,
        metavar="DIR",
        help="folder to write (new or empty, or an earlier scenes dataset with --force)",
    )
    p.add_argument(
        "--train", type=_positive_or_zero, default=10000, metavar="N", help="training images (default: 10000)"
    )
    p.add_argument("--val", type=_positive_or_zero, default=1000, metavar="N", help="validation images (default: 1000)")
    p.add_argument("--test", type=_positive_or_zero, default=1000, metavar="N", help="test images (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--workers",
        "-j",
        type=int,
        default=1,
        metavar="N",
        help="processes rendering in parallel (default: 1; the result does not depend on it)",
    )
    p.add_argument(
        "--image-format",
        choices=("jpeg", "png"),
        default="jpeg",
        help="jpeg (quality 95, no chroma subsampling; default, fast) or png (lossless, slower)",
    )
    p.add_argument(
        "--categories",
        metavar="NAMES",
        default=None,
        help="comma-separated subset of the categories to use (default: all 40); "
        "e.g. dog,cat,car,apple for a quick experiment",
    )
    p.add_argument("--force", action="store_true", help="replace a scenes dataset already in --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_scenes)

    p = actions.add_parser(
        "stats",
        help="statistics of a caption dataset in any supported format",
        description="Print the number of images and captions (per split), captions per image, vocabulary "
        "size at min counts 1 and 5, a histogram of caption lengths in words, missing image files and "
        "any other problem found while loading. Formats: COCO captions JSON (or a folder of "
        "captions_*.json, such as a scenes dataset), Flickr8k/30k token files with their split lists, "
        "Karpathy split JSON, JSONL or CSV of (file, caption) rows. Exit status 1 when any problem was "
        "found (malformed lines or entries, missing images, ...), 0 for a clean dataset.",
    )
    p.add_argument("path", metavar="PATH", help="caption file, or a folder holding one")
    p.add_argument(
        "--format",
        default="auto",
        choices=("auto", "coco", "flickr", "karpathy", "jsonl", "csv"),
        help="dataset format (default: auto, from file names and content)",
    )
    p.add_argument(
        "--images-dir",
        dest="images",
        metavar="DIR",
        default=None,
        help="folder the image file names are relative to (default: guessed from the layout)",
    )
    add_deprecated(p, "--images", "--images-dir", dest="images", metavar="DIR")
    p.add_argument("--split", default=None, help="only this split (train, val, test, restval)")
    p.add_argument(
        "--keep-restval",
        action="store_true",
        help="Karpathy files: keep 'restval' as its own split instead of folding it into train",
    )
    p.add_argument(
        "--on-missing",
        choices=("skip", "error"),
        default="skip",
        help="images whose file is missing: count and skip them (default) or fail",
    )
    p.add_argument("--no-check-files", action="store_true", help="do not look for the image files at all (faster)")
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    p.add_argument(
        "--problems",
        type=int,
        default=5,
        metavar="N",
        help="list the first N problems of each kind (at the end of the report; on stderr with --json; default: 5)",
    )
    p.set_defaults(func=cmd_stats)

    p = actions.add_parser(
        "preview",
        help="draw a grid of generated scenes with captions (PNG)",
        description="Draw the first ROWS x COLS training scenes of a seed with their first "
        "caption; used for docs/scenes_grid.png.",
    )
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="PNG file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--rows", type=int, default=3, help="rows of images (default: 3)")
    p.add_argument("--cols", type=int, default=4, help="columns of images (default: 4)")
    p.set_defaults(func=cmd_preview)


def cmd_scenes(args: argparse.Namespace) -> int:
    from captioner.training.scenes import CATEGORIES, generate_scenes
    from captioner.training.scenes.catalogue import CATEGORY_BY_NAME

    categories = list(CATEGORIES)
    if args.categories:
        names = [n.strip() for n in args.categories.split(",") if n.strip()]
        unknown = [n for n in names if n not in CATEGORY_BY_NAME]
        if unknown:
            raise CaptionerError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                f"choose from {', '.join(CATEGORY_BY_NAME)}"
            )
        categories = [CATEGORY_BY_NAME[n] for n in dict.fromkeys(names)]
    if args.workers < 1:
        raise CaptionerError("--workers must be at least 1")
    summary = generate_scenes(
        args.out,
        {"train": args.train, "val": args.val, "test": args.test},
        args.seed,
        workers=min(args.workers, os.cpu_count() or 1),
        image_format=args.image_format,
        categories=categories,
        overwrite=args.force,
        progress=not args.quiet,
    )
    splits = ", ".join(f"{k} {v}" for k, v in summary.splits.items())
    print(
        f"wrote {summary.images} images ({splits}) to {summary.out_dir} in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.0f} images/s)"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from captioner.training.datasets import load_dataset
    from captioner.training.datasets.stats import compute_stats, format_stats

    ds = load_dataset(
        args.path,
        args.format,
        images_dir=args.images,
        split=args.split,
        on_missing=args.on_missing,
        check_files=not args.no_check_files,
        fold_restval=not args.keep_restval,
    )
    stats = compute_stats(ds)
    listed = ds.report.summary(shown=args.problems) if not ds.report.ok and args.problems > 0 else None
    if args.json:
        print(json.dumps(stats.to_dict(), ensure_ascii=False))
        if listed:  # stdout stays one JSON object
            print(listed, file=sys.stderr)
    else:
        print(format_stats(stats, problems=listed))  # each problem once, at the end of the report
    return 0 if ds.report.ok else 1  # a dataset with problems fails a script's check


def cmd_preview(args: argparse.Namespace) -> int:
    from captioner.training.scenes import render_preview

    if args.rows < 1 or args.cols < 1:
        raise CaptionerError("--rows and --cols must be at least 1")
    render_preview(args.seed, args.rows, args.cols).save(args.out, optimize=True)
    print(f"wrote {args.rows * args.cols} scenes to {args.out}")
    return 0
