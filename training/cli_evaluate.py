"""The ``captioner evaluate`` verb (a ``captioner.commands`` entry point).

Thin layer over :mod:`captioner.training.evaluate`: parse, load, call, print the table, write the
report.
"""

from __future__ import annotations

import argparse
import sys

from captioner.cli_names import add_deprecated
from captioner.errors import CaptionerError
from captioner.metrics import METRIC_GROUPS
from captioner.options import Range

# ranges of this verb's own numeric options (a value outside: one line, exit 2)
BOOTSTRAP = Range("bootstrap resamples", 0, 100_000)
SEED = Range("seed", 0, 2**32 - 1)
WORST = Range("worst examples", 0, 100_000)
LIMIT = Range("limit", 1, 10**9)
TOKENIZERS = ("auto", "ptb", "ours")

EPILOG = """examples:
  captioner evaluate --checkpoint runs/scenes/best --data data/scenes --split test --out report.json
  captioner evaluate --checkpoint runs/coco/best --data dataset_coco.json --images-dir coco/ --beam-size 3
  captioner evaluate --predictions results.json --references annotations/captions_val2014.json
  captioner evaluate --predictions captions.jsonl --references data/scenes --split test --html report.html
  captioner evaluate --predictions a.jsonl --compare b.jsonl --references data/scenes --split test
  captioner evaluate --checkpoint runs/a/best --compare runs/b/best --data data/scenes

predictions files:
  COCO results JSON    [{"image_id": 42, "caption": "a dog on the grass"}, ...]
  JSONL                {"file": "test/000001.jpg", "caption": "..."} per line (captioner caption DIR --out)
  CSV                  file,caption[,score] with a header
A prediction matches a reference image by id, else by the longest tail of its path that
names a single image (so "000001.jpg" works when it is unique).

metrics: BLEU-1..4, CIDEr-D, ROUGE-L (pure Python, same numbers as coco-caption),
METEOR and SPICE (Java; skipped with the reason when they cannot run), and scene
accuracy when the references are a built-in scenes dataset. Captions are tokenized as
coco-caption does (its Java PTB tokenizer) when Java is installed, so the numbers are
the ones papers and the COCO server report; every value comes with a 95% bootstrap
interval (resamples of the images). docs/metrics.md explains each choice."""


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
        "--compare",
        metavar="PATH",
        default=None,
        help="compare with a second system: its predictions file, or a checkpoint folder to caption the "
        "same images with (differences, paired-bootstrap p-values, the images where they differ most)",
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
        "--images-dir",
        dest="images",
        metavar="DIR",
        default=None,
        help="folder the dataset's image paths are relative to (default: found from --data)",
    )
    add_deprecated(src, "--images", "--images-dir", dest="images", metavar="DIR")
    src.add_argument(
        "--limit",
        type=LIMIT.argparse,
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
    out.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default="auto",
        help="ptb: coco-caption's PTB tokenizer (Java), scores equal coco-caption's; ours: the project's "
        "tokenizer (no Java); auto: ptb when Java is installed, else ours (default: auto)",
    )
    out.add_argument(
        "--bootstrap",
        type=BOOTSTRAP.argparse,
        default=1000,
        metavar="N",
        help="resamples of the images for the 95%% intervals and the comparison p-values; 0: none (default: 1000)",
    )
    out.add_argument(
        "--seed", type=SEED.argparse, default=0, metavar="S", help="seed of the bootstrap resamples (default: 0)"
    )
    out.add_argument("--out", "-o", metavar="FILE", default=None, help="write the JSON report here")
    out.add_argument(
        "--html",
        metavar="FILE",
        default=None,
        help="write a self-contained HTML report here (metric table, every image sortable by any metric, "
        "thumbnails when the images are there)",
    )
    out.add_argument(
        "--worst",
        type=WORST.argparse,
        default=10,
        metavar="K",
        help="worst examples kept in the report (default: 10)",
    )
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def _model_run(args: argparse.Namespace, checkpoint: str | None, refs) -> tuple[list, list[str], dict]:
    """Caption ``refs`` with a checkpoint: (pairs, notes, source)."""
    from captioner.runtime.captioner import load_captioner

    from . import evaluate as ev

    model = load_captioner(checkpoint, device=args.device)
    run = ev.caption_split(
        model,
        refs,
        batch_size=args.batch_size,
        workers=args.workers,
        beam_size=args.beam_size,
        max_length=args.max_length,
        length_penalty=args.length_penalty,
        progress=False if args.quiet else None,
    )
    return run.pairs, ev.model_notes(run, refs), ev.model_source(model, refs)


def _predictions_run(path: str, refs) -> tuple[list, list[str], dict]:
    from . import evaluate as ev

    preds = ev.load_predictions(path)
    matched = ev.match_predictions(preds, refs)
    return matched.pairs, ev.match_notes(preds, matched, refs), {"mode": "predictions", "predictions": path}


def _load_refs(args: argparse.Namespace, *, model: bool):
    from . import evaluate as ev

    if not model:
        return ev.load_references(
            args.data, format=args.format, images_dir=args.images, split=args.split, check_files=False
        )
    refs = ev.load_references(args.data, format=args.format, images_dir=args.images, split=args.split or "test")
    if args.limit is not None:
        refs.items = refs.items[: args.limit]
    return refs


def cmd_compare(args: argparse.Namespace) -> int:
    """``--compare``: score two systems on the same images and print the differences."""
    from pathlib import Path

    from . import eval_compare
    from . import evaluate as ev

    b_is_model = Path(args.compare).is_dir()
    refs = _load_refs(args, model=args.predictions is None or b_is_model)
    if args.predictions is not None:
        pairs_a, notes_a, source_a = _predictions_run(args.predictions, refs)
    else:
        pairs_a, notes_a, source_a = _model_run(args, args.checkpoint, refs)
    if b_is_model:
        pairs_b, notes_b, source_b = _model_run(args, args.compare, refs)
    else:
        pairs_b, notes_b, source_b = _predictions_run(args.compare, refs)
    names = (args.predictions or source_a.get("checkpoint") or "A", args.compare)
    report = eval_compare.compare_captions(
        pairs_a,
        pairs_b,
        refs,
        names=names,
        metrics=args.metrics,
        tokenizer=args.tokenizer,
        bootstrap=args.bootstrap,
        seed=args.seed,
        differ_k=args.worst,
    )
    report["notes"] = [f"A: {n}" for n in notes_a] + [f"B: {n}" for n in notes_b] + report["notes"]
    report["sources"] = {"a": source_a, "b": source_b, "references": str(refs.source)}
    print(eval_compare.format_comparison(report))
    if args.out:
        print(f"report written to {ev.write_report(report, args.out)}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import evaluate as ev

    if args.predictions is not None and args.checkpoint is not None:
        raise CaptionerError(
            "give either --checkpoint (caption the split with a model) or --predictions "
            "(score existing captions), not both"
        )
    if args.html and args.compare:
        raise CaptionerError("--html makes the page of one system; drop --compare (or --html)")
    if args.compare is not None:
        return cmd_compare(args)
    options = {"metrics": args.metrics, "worst_k": args.worst, "tokenizer": args.tokenizer}
    options |= {"bootstrap": args.bootstrap, "seed": args.seed}
    refs = _load_refs(args, model=args.predictions is None)
    if args.predictions is not None:
        report = ev.evaluate_predictions(args.predictions, refs, **options)
    else:
        from captioner.runtime.captioner import load_captioner

        model = load_captioner(args.checkpoint, device=args.device)
        report = ev.evaluate_model(
            model,
            refs,
            batch_size=args.batch_size,
            workers=args.workers,
            beam_size=args.beam_size,
            max_length=args.max_length,
            length_penalty=args.length_penalty,
            progress=False if args.quiet else None,
            **options,
        )
    print(ev.format_table(report))
    if args.out:
        path = ev.write_report(report, args.out)
        print(f"report written to {path}", file=sys.stderr)
    if args.html:
        from . import eval_html

        images = {ev._relative_name(item, refs): item.image_path for item in refs.items}
        path = eval_html.write_html(report, args.html, images=images)
        print(f"HTML report written to {path}", file=sys.stderr)
    return 0
