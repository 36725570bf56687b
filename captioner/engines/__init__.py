"""Engines that run the one image path over many images.

* ``local`` (:mod:`captioner.folder`): one process, decoding threads and one model;
* ``ray`` (:mod:`captioner.engines.ray_engine`): Ray Data, from a laptop to a cluster;
  an optional extra, ``pip install "captioner[ray]"``.

This module imports neither Ray nor torch: the command line adds the options here and
dispatches to :func:`run_ray_command`, which says how to install Ray when it is missing.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import CaptionerError

ENGINES = ("local", "ray")


def _range_type(name: str):  # the ranges live beside the engine; this stays import-light
    def parse(text: str) -> float:
        from .ray_engine import ACTOR_CPUS, ACTORS, OBJECT_STORE_MB

        return {"actors": ACTORS, "actor_cpus": ACTOR_CPUS, "object_store_mb": OBJECT_STORE_MB}[name].argparse(text)

    return parse


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """``--engine`` and the Ray options of ``captioner caption``."""
    g = p.add_argument_group("engine (with --out)")
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process (default); ray: Ray Data, on a local Ray or a cluster (pip install 'captioner[ray]')",
    )
    g.add_argument(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="Ray cluster to run on, e.g. ray://head:10001 or auto (default: start a local Ray for the run)",
    )
    g.add_argument(
        "--ray-actors",
        type=_range_type("actors"),
        default=None,
        metavar="N",
        help="captioning actors, each holding one model (default: one per GPU, else one per core decoding does not need: round(0.8 x CPUs))",
    )
    g.add_argument(
        "--ray-actor-cpus",
        type=_range_type("actor_cpus"),
        default=None,
        metavar="X",
        help="CPUs reserved per actor, fractions allowed (default: the CPUs left after decoding, shared)",
    )
    g.add_argument(
        "--ray-object-store-mb",
        type=_range_type("object_store_mb"),
        default=None,
        metavar="M",
        help="object store memory of a local Ray, in MiB (default: Ray's, 30%% of memory)",
    )
    g.add_argument(
        "--path-column",
        default="path",
        metavar="NAME",
        help="column holding the image paths in JSONL/CSV manifests (--engine ray; default: path)",
    )


def run_ray_command(args: argparse.Namespace) -> int:
    """``captioner caption ... --engine ray``: the run, then the local tool's summary line."""
    from .ray_engine import RAY_INSTALL_HINT, ray_available

    if not ray_available():
        raise CaptionerError(RAY_INSTALL_HINT)
    if args.out is None:
        raise CaptionerError("--engine ray writes to a file or folder: add --out captions.jsonl (or .csv, .parquet)")
    from ..options import DEFAULT_LABELS, CaptionOptions
    from .ray_engine import RaySettings, caption_on_ray

    settings = RaySettings(
        address=args.ray_address,
        actors=None if args.ray_actors is None else int(args.ray_actors),
        actor_cpus=args.ray_actor_cpus,
        object_store_mb=None if args.ray_object_store_mb is None else int(args.ray_object_store_mb),
    )
    try:
        summary = caption_on_ray(
            args.images,
            args.out,
            checkpoint=args.checkpoint,
            fmt=args.format,
            errors=args.errors,
            recursive=args.recursive,
            path_column=args.path_column,
            batch_size=args.batch_size,
            options=CaptionOptions(
                args.beam_size, args.max_length, args.length_penalty, args.no_repeat_ngram_size, DEFAULT_LABELS
            ),
            device=args.device,
            settings=settings,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(f"interrupted; the captions so far are in {args.out}: rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.line(), file=sys.stderr)
    return 0
