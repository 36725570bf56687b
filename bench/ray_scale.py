"""Ray engine throughput with 1 and 2 captioning actors, against the local folder tool.

    python -m bench.ray_scale                     # 384 JPEGs of 640x480, greedy, ~3-5 min
    python -m bench.ray_scale --images 1024 --actors 1 2 4 --batch-size 32

Captions one folder of synthetic 640x480 JPEGs with
:func:`captioner.engines.ray_engine.caption_on_ray` on one local Ray (all of this
machine's cores, started once for every run) per pool size, and with
:func:`captioner.folder.caption_folder` in this process for reference. Per run:

* ``images/s``: images over the run's seconds, the actors' start (a model load each) included;
* ``decode`` / ``caption`` ms CPU per image: Ray Data's own accounting of the CPU time of
  the decode tasks and of the actors, per image. They do not depend on how busy the
  machine is, and they are the two numbers of the scaling model in docs/scale.md: a
  cluster delivers about (CPU cores) / (decode + caption CPU seconds per image);
* ``per actor busy images/s``: images per second of actor time (summed over the actors),
  what one actor does while it has work: the figure to multiply by the pool size. For
  the local tool: its own images/s over the captioning, the model load excluded.

Last line: the best Ray run's images/s over the folder tool's (target: within 10 %).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from . import common

STAGE = re.compile(
    r"Operator \d+ (?P<name>[^:]+):.*?Remote wall time: .*?(?P<wall>[\d.]+)(?P<wu>us|ms|s) total.*?"
    r"Remote cpu time: .*?(?P<cpu>[\d.]+)(?P<cu>us|ms|s) total",
    re.S,
)
UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def stage_seconds(stats: str) -> dict[str, tuple[float, float]]:
    """{stage name: (summed remote wall s, summed remote CPU s)} from ``Dataset.stats()`` text."""
    out = {}
    for m in STAGE.finditer(stats):
        out[m["name"]] = (float(m["wall"]) * UNIT[m["wu"]], float(m["cpu"]) * UNIT[m["cu"]])
    return out


def run_ray(folder: Path, n_images: int, actors: int, args) -> dict:
    from captioner.engines.ray_engine import RaySettings, caption_on_ray

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = caption_on_ray(
            [str(folder)],
            Path(tmp) / "captions.jsonl",
            checkpoint=str(args.checkpoint_path),
            batch_size=args.batch_size,
            settings=RaySettings(actors=actors),
            progress=False,
        )
    seconds = time.perf_counter() - start
    if summary.failed or summary.done != n_images:
        raise SystemExit(f"error: {summary.failed} images failed; see the errors file")
    stages = stage_seconds(summary.extra["ray_stats"])
    decode = next(v for k, v in stages.items() if "prepare_batch" in k)
    caption = next(v for k, v in stages.items() if "CaptionActor" in k)
    return {
        "run": f"ray, {actors} actor(s) x {summary.extra['actor_cpus']:g} CPU",
        "images": n_images,
        "seconds": seconds,
        "images_per_s": n_images / seconds,
        "decode_cpu_ms": 1000 * decode[1] / n_images,
        "caption_cpu_ms": 1000 * caption[1] / n_images,
        "actor_busy_images_per_s": n_images / caption[0] if caption[0] else None,  # per actor
    }


def run_local(folder: Path, n_images: int, args) -> dict:
    from captioner import Captioner
    from captioner.folder import caption_folder

    start = time.perf_counter()
    model = Captioner.load(args.checkpoint_path)
    with tempfile.TemporaryDirectory() as tmp:
        summary = caption_folder(
            model, [folder], Path(tmp) / "captions.jsonl", batch_size=args.batch_size, workers=2, progress=False
        )
    seconds = time.perf_counter() - start
    if summary.failed or summary.done != n_images:
        raise SystemExit(f"error: the folder tool captioned {summary.done} of {n_images} images")
    return {
        "run": "local folder tool (1 process, 2 decode threads, as the CLI)",
        "images": n_images,
        "seconds": seconds,
        "images_per_s": n_images / seconds,
        "actor_busy_images_per_s": summary.images_per_second,
    }


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("ray_scale", __doc__)
    p.add_argument("--images", type=int, default=384, help="JPEGs in the folder (default 384)")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16, the CLI's)")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="pool sizes to measure (default 1 2)")
    args = p.parse_args(argv)
    common.apply_threads(args)
    import ray

    info = common.machine_info()
    common.header("ray_scale: the Ray engine with 1 and 2 actors vs the local folder tool", info)
    args.checkpoint_path = common.resolve_checkpoint(args.checkpoint)
    folder = common.jpeg_folder(args.images)
    print(f"checkpoint {args.checkpoint_path}; folder {folder}", file=sys.stderr, flush=True)

    rows = [run_local(folder, args.images, args)]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    try:
        run_ray(common.jpeg_folder(16), 16, 1, args)  # warm-up: worker imports, the ONNX cache
        for n in args.actors:
            rows.append(run_ray(folder, args.images, n, args))
            print(f"  {rows[-1]['run']}: {rows[-1]['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    print(
        common.format_table(
            rows,
            [
                ("run", "run"),
                ("images", "images"),
                ("seconds", "seconds"),
                ("images_per_s", "images/s"),
                ("decode_cpu_ms", "decode ms CPU/image"),
                ("caption_cpu_ms", "caption ms CPU/image"),
                ("actor_busy_images_per_s", "per actor busy images/s"),
            ],
        )
    )
    best = max(rows[1:], key=lambda r: r["images_per_s"])
    ratio = best["images_per_s"] / rows[0]["images_per_s"]
    print(
        f"\nRay / folder tool on this machine (model loads included in both): {ratio:.2f}x "
        f"({best['run']}: {best['images_per_s']:.1f} vs {rows[0]['images_per_s']:.1f} images/s); "
        "target >= 0.9x"
    )
    info["load_average_end"] = common.machine_info()["load_average"]
    payload = {"machine": info, "batch_size": args.batch_size, "rows": rows, "ray_over_folder": ratio}
    common.write_json("ray_scale", payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
