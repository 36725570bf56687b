"""The ``captioner units`` and ``captioner explain`` verbs.

Parsing imports nothing heavy: torch, the model and the analysis are imported by the
handlers, so ``captioner --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import Range

UNITS_IMAGES = Range("images", 1, 10_000)
TOP_UNITS = Range("top units", 1, 50)
SHUFFLES = Range("shuffles", 1, 100)


def add_explain_verbs(sub: argparse._SubParsersAction) -> None:
    """Register ``units`` and ``explain`` on the ``captioner`` sub-parsers."""
    from .cli import add_model_options

    p = sub.add_parser(
        "units",
        help="which decoder units track colour words, counts, objects, the caption's end ... (HTML report)",
        description="Run the decoder teacher-forced over a split's reference captions and over its own "
        "captions of the same images, record every unit of its state at every word, and score each unit "
        "as a detector of properties a person can name (ROC-AUC beside a label-shuffled baseline). "
        "Writes an HTML report (self-contained) and units.json beside it (docs/explain.md).",
        epilog="example:\n  captioner units --data data/scenes --split val --images 200 --out units/report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder with captions_<split>.json")
    p.add_argument("--split", default="val", help="which split (default: val)")
    p.add_argument(
        "--images",
        type=UNITS_IMAGES.argparse,
        default=200,
        metavar="N",
        help=f"the first N images of the split, {UNITS_IMAGES.describe()} (default: 200)",
    )
    p.add_argument(
        "--top",
        type=TOP_UNITS.argparse,
        default=5,
        metavar="K",
        help=f"units listed per property, {TOP_UNITS.describe()} (default: 5)",
    )
    p.add_argument(
        "--shuffles",
        type=SHUFFLES.argparse,
        default=10,
        metavar="S",
        help=f"label permutations of the baseline, {SHUFFLES.describe()} (default: 10)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffles and the random units (default: 0)")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="the HTML report; units.json goes beside it")
    p.set_defaults(func=cmd_units)

    p = sub.add_parser(
        "explain",
        help="per-word attention maps of captions (PNG figures; attention models)",
        description="Caption each image with an attention model and write, per image, a PNG: the image, then "
        "one tile per generated word with the attention of the step that chose it laid over the image, the "
        "caption and its confidence in the title; explain.json beside them holds every map (docs/explain.md). "
        "A pooled model has no attention maps: use `captioner units` for it.",
        epilog="example:\n  captioner explain photo.jpg scene.png --checkpoint runs/attention/best --out explain/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_model_options(p)
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for the PNG figures and explain.json")
    p.set_defaults(func=cmd_explain)


def cmd_units(args: argparse.Namespace) -> int:
    from .model import Captioner
    from .units import PROPERTIES, analyse_units, word_sets
    from .units_report import write_report

    model = Captioner.load(args.checkpoint, device=args.device)
    analysis = analyse_units(
        model, args.data, args.split, args.images, top_k=args.top, shuffles=args.shuffles, seed=args.seed
    )
    html_path, json_path = write_report(analysis, word_sets(args.data, args.split), Path(args.out))
    for prop, units in analysis.top.items():
        t = units[0]
        print(
            f"{prop:<17} {t.name:<8} AUC {t.auc:.3f} (strength {t.strength:.3f}; shuffled {t.shuffled:.3f}, "
            f"chance ceiling {analysis.chance_ceiling[prop]:.3f})"
        )
    missing = [p for p in PROPERTIES if p not in analysis.top]
    if missing:
        print(f"not scored (no positive or no negative word): {', '.join(missing)}", file=sys.stderr)
    print(f"wrote {html_path} and {json_path}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import require_attention, write_figures
    from .model import Captioner

    model = Captioner.load(args.checkpoint, device=args.device)
    require_attention(model)  # the one line for a pooled model, before any image is read
    for path in write_figures(model, args.images, args.out):
        print(f"wrote {path}")
    return 0
