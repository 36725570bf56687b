"""The ``captioner units`` and ``captioner explain`` verbs.

Parsing imports nothing heavy: torch, the model and the analysis are imported by the
handlers, so ``captioner --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .errors import CaptionerError
from .options import Range

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import ImageItem

UNITS_IMAGES = Range("limit", 1, 10_000)
TOP_UNITS = Range("top units", 1, 50)
SHUFFLES = Range("shuffles", 1, 100)
EXPLAIN_CHUNK = 8  # images per explain() call; a chunk with an unreadable image is redone one by one
EXPLAIN_JSON = "explain.json"


def add_explain_verbs(sub: argparse._SubParsersAction) -> None:
    """Register ``units`` and ``explain`` on the ``captioner`` sub-parsers."""
    from .cli import add_model_options
    from .cli_names import add_deprecated

    p = sub.add_parser(
        "units",
        help="which decoder units track colour words, counts, objects, the caption's end ... (HTML report)",
        description="Run the decoder teacher-forced over a split's reference captions and over its own "
        "captions of the same images, record every unit of its state at every word, and score each unit "
        "as a detector of properties a person can name (ROC-AUC beside a label-shuffled baseline). "
        "Writes an HTML report (self-contained) and units.json beside it (docs/explain.md).",
        epilog="example:\n  captioner units --data data/scenes --split val --limit 200 --out units/report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p)
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder with captions_<split>.json")
    p.add_argument("--split", default="val", help="which split (default: val)")
    p.add_argument(
        "--limit",
        type=UNITS_IMAGES.argparse,
        default=200,
        metavar="N",
        help=f"only the first N images of the split, {UNITS_IMAGES.describe()} (default: 200)",
    )
    add_deprecated(p, "--images", "--limit", type=UNITS_IMAGES.argparse, dest="limit")
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
        "A pooled model has no attention maps: use `captioner units` for it.\n\n"
        "Folders are walked as `captioner caption` walks them (-r for sub-folders); each figure keeps the "
        "image's folder under DIR (test/000003.jpg -> DIR/test/000003.png), and explain.json names it under "
        '"figure". An unreadable file is reported on stderr by name and the others are still drawn '
        "(exit status 1 if any failed).",
        epilog="examples:\n  captioner explain photo.jpg scene.png --checkpoint runs/attention/best --out explain/\n"
        "  captioner explain photos/ -r --out explain/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="PATH", help="image files and/or folders")
    add_model_options(p)
    p.add_argument(
        "--out", "-o", required=True, metavar="DIR", help="folder for the PNG figures and explain.json (created)"
    )
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    p.set_defaults(func=cmd_explain)


def cmd_units(args: argparse.Namespace) -> int:
    """Reads the decoder's hidden units, so it runs on the PyTorch modules (captioner[train])."""
    from .model import ReferenceCaptioner
    from .units import PROPERTIES, analyse_units, word_sets
    from .units_report import write_report

    model = ReferenceCaptioner.load(args.checkpoint, device=args.device)
    analysis = analyse_units(
        model, args.data, args.split, args.limit, top_k=args.top, shuffles=args.shuffles, seed=args.seed
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
    """Figures for every readable image; an unreadable one is reported by name and the run
    goes on (exit status 1 if any failed, as ``captioner caption FILE...``)."""
    from .explain import require_attention
    from .runtime.captioner import load_captioner

    model = load_captioner(args.checkpoint, device=args.device)
    require_attention(model)  # the one line for a pooled model, before any image is read
    out = Path(args.out)
    items, failures = explain_inputs(args.images, args.recursive, out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CaptionerError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    record: dict[str, dict] = {}
    names = figure_names([it.key for it in items])
    sources = {Path(str(it.path)).resolve() for it in items}  # never written over
    try:
        for item, ex in _explained(model, items, failures):
            if (out / names[item.key]).resolve() in sources:
                failures.append((str(item.path), f"its figure {out / names[item.key]} would overwrite an input"))
                continue
            figure = _write_figure(ex, out / names[item.key])
            record[str(item.path)] = {**ex.to_dict(), "figure": names[item.key]}
            print(f"wrote {figure}", flush=True)
    finally:  # an interrupted run still lists the figures it wrote
        if record:
            from .fsio import atomic_write_text

            atomic_write_text(out / EXPLAIN_JSON, json.dumps(record, indent=1) + "\n")
    for name, reason in failures:
        print(f"error: {name}: {reason}", file=sys.stderr)
    print(
        f"explained {len(record)} image(s), failed {len(failures)}; figures and {EXPLAIN_JSON} in {out}",
        file=sys.stderr,
    )
    return 1 if failures else 0


def explain_inputs(paths: Sequence[str], recursive: bool, out: Path) -> tuple[list[ImageItem], list[tuple[str, str]]]:
    """The images under ``paths`` (folders walked as ``captioner caption`` walks them, the
    output folder left out) and the (name, reason) of inputs that cannot be explained."""
    from .walk import find_images

    failures = [(p, "no such file or folder") for p in paths if not os.path.lexists(p)]
    present = [p for p in paths if os.path.lexists(p)]
    if not present:
        return [], failures
    items, problems = find_images(present, recursive=recursive)
    failures += [(str(p.key), p.reason) for p in problems]
    inside, named = out.resolve(), {Path(p).resolve() for p in present if not os.path.isdir(p)}
    found = len(items)
    # a folder's images inside the output folder may be our own figures: left out (named files stay)
    items = [it for it in items if (r := Path(str(it.path)).resolve()) in named or inside not in r.parents]
    if not items and not failures:
        hint = "" if recursive else " (add -r to look in sub-folders)"
        if found:
            hint = f" outside the output folder {out} (its images may be figures; pick another --out)"
        raise CaptionerError(f"no image files found in {', '.join(map(str, paths))}{hint}")
    return items, failures


def figure_names(keys: Sequence[str]) -> dict[str, str]:
    """The figure file of each image key: the key with ``.png`` for its extension, its
    folders kept (``test/000003.jpg`` -> ``test/000003.png``, so ``val/000003.jpg`` gets its
    own); keys that would still share a name keep their whole name (``a.jpg.png``)."""
    stem = {k: PurePosixPath(k).with_suffix(".png").as_posix() for k in keys}
    taken: dict[str, int] = {}
    for name in stem.values():
        taken[name.lower()] = taken.get(name.lower(), 0) + 1  # case-insensitive file systems too
    return {k: stem[k] if taken[stem[k].lower()] == 1 else f"{k}.png" for k in keys}


def _explained(model: object, items: Sequence[ImageItem], failures: list[tuple[str, str]]) -> Iterator[tuple]:
    """(item, explanation) of every readable image, a few at a time; an unreadable image
    goes to ``failures`` with its reason and the others of its chunk are retried alone."""
    from .errors import ImageLoadError
    from .explain import explain

    for lo in range(0, len(items), EXPLAIN_CHUNK):
        chunk = items[lo : lo + EXPLAIN_CHUNK]
        try:
            yield from zip(chunk, explain(model, [str(it.path) for it in chunk]))  # type: ignore[arg-type]
            continue
        except ImageLoadError:
            pass
        for item in chunk:
            try:
                (ex,) = explain(model, [str(item.path)])  # type: ignore[arg-type]
            except ImageLoadError as e:
                failures.append((str(item.path), e.reason))
                continue
            yield item, ex


def _write_figure(ex: object, target: Path) -> Path:
    from .explain import render_figure
    from .fsio import atomic_write_path

    figure = render_figure(ex)  # type: ignore[arg-type]
    return atomic_write_path(target, lambda tmp: figure.save(tmp, format="PNG"))
