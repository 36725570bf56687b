"""Folder captioning speed against the encoder-only limit.

    python -m bench.folder                        # 256 JPEGs of 640x480, greedy, ~1-2 min
    python -m bench.folder --images 1000 --batch-size 32 --workers 2 --beam 3 --plain

Captions a folder of synthetic 640x480 JPEGs with :func:`captioner.folder.caption_folder`
(the library behind ``captioner caption DIR``: decode threads feeding batches to the
model, one JSONL line per image) and compares its images/s with the encoder-only limit
measured in the same process before and after (the fastest encoder forward on
pre-decoded batches). ``--plain`` adds a run on the PyTorch reference path
(:class:`captioner.ReferenceCaptioner`: eager encoder, the search over the PyTorch step),
for reference.

``--serial`` adds a run of the same folder through :func:`captioner.pipeline.caption_stream`
(encoder and decoder one after the other on the main thread, what the folder tool did
before its decoder got a thread of its own), side by side.

Target (issue "Performance: serve the shipped default at the speed of its CNN"): folder
captioning >= 85 % of the encoder-only limit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from . import common


def run_folder(model, folder: Path, args) -> dict:
    from captioner.folder import caption_folder

    with tempfile.TemporaryDirectory() as tmp:
        summary = caption_folder(
            model,
            [folder],
            Path(tmp) / "captions.jsonl",
            batch_size=args.batch_size,
            workers=args.workers,
            beam_size=args.beam,
            progress=False,
        )
    if summary.failed:
        raise SystemExit(f"error: {summary.failed} images failed; see the errors file")
    return {"images": summary.done, "seconds": summary.seconds, "images_per_s": summary.images_per_second}


def run_serial(model, folder: Path, args) -> dict:
    """The folder's images through the one-thread stream (decoder on the main thread)."""
    import time

    from captioner.options import CaptionOptions
    from captioner.pipeline import caption_stream
    from captioner.walk import find_images

    items, _ = find_images([folder])
    start = time.perf_counter()
    rows = caption_stream(
        model, items, batch_size=args.batch_size, workers=args.workers, options=CaptionOptions(beam_size=args.beam)
    )
    done = sum(1 for _, result, _ in rows if result is not None)
    seconds = time.perf_counter() - start
    return {"images": done, "seconds": seconds, "images_per_s": done / seconds}


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("folder", __doc__)
    p.add_argument("--images", type=int, default=256, help="JPEGs in the folder (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="caption_folder batch size (default 16, the CLI's)")
    p.add_argument("--workers", type=int, default=2, help="decode threads (default 2, the CLI's)")
    p.add_argument("--beam", type=int, default=1, help="beam size (default 1: greedy)")
    p.add_argument("--plain", action="store_true", help="also run on the PyTorch reference path (ReferenceCaptioner)")
    p.add_argument("--serial", action="store_true", help="also run the one-thread stream (decoder on the main thread)")
    p.add_argument(
        "--precision", choices=["fp32", "int8"], default=None, help="encoder precision (default: the checkpoint's)"
    )
    args = p.parse_args(argv)
    common.apply_threads(args)
    from captioner import Captioner, ReferenceCaptioner

    info = common.machine_info()
    common.header("folder: captioning a folder vs the encoder-only limit", info)
    ckpt = common.resolve_checkpoint(args.checkpoint)
    folder = common.jpeg_folder(args.images)
    model = Captioner.load(ckpt, precision=args.precision)
    backend = f"onnxruntime {model.precision}"
    print(f"checkpoint {ckpt} ({backend}); folder {folder}", file=sys.stderr, flush=True)

    limit_start = common.encoder_limit(model)
    run_folder(model, common.jpeg_folder(16), args)  # warm-up: threads, first batches
    fast = run_folder(model, folder, args)
    serial = run_serial(model, folder, args) if args.serial else None
    limit_end = common.encoder_limit(model)
    limit = (limit_start["images_per_s"] + limit_end["images_per_s"]) / 2
    rows = [
        {
            "run": f"folder captioning ({backend})",
            **fast,
            "pct_encoder_limit": 100 * fast["images_per_s"] / limit,
        }
    ]
    if serial is not None:
        rows.append(
            {"run": "one-thread stream (before)", **serial, "pct_encoder_limit": 100 * serial["images_per_s"] / limit}
        )
    if args.plain:
        plain_model = ReferenceCaptioner.load(ckpt, device="cpu")
        plain = run_folder(plain_model, folder, args)
        rows.append(
            {
                "run": "folder captioning (plain pytorch)",
                **plain,
                "pct_encoder_limit": 100 * plain["images_per_s"] / limit,
            }
        )
    rows.append(
        {
            "run": f"encoder-only limit ({limit_start['backend']}, batch {limit_start['batch_size']})",
            "images_per_s": limit,
            "pct_encoder_limit": 100.0,
        }
    )
    print()
    print(
        common.format_table(
            rows,
            [
                ("run", "run"),
                ("images", "images"),
                ("seconds", "seconds"),
                ("images_per_s", "images/s"),
                ("pct_encoder_limit", "% of encoder limit"),
            ],
        )
    )
    print(
        f"\nencoder-only limit {limit_start['images_per_s']:.1f} (start) / {limit_end['images_per_s']:.1f} (end) "
        f"images/s; {limit_start['by_backend_and_batch']}"
    )
    print(f"target folder >= 85% of the encoder-only limit: {rows[0]['pct_encoder_limit']:.0f}%")
    out = common.write_json(
        "folder",
        {
            "machine": info,
            "load_average_end": common.machine_info()["load_average"],
            "checkpoint": str(ckpt),
            "batch_size": args.batch_size,
            "workers": args.workers,
            "beam": args.beam,
            "encoder_limit": {"start": limit_start, "end": limit_end, "mean": limit},
            "rows": rows,
        },
        args.json,
    )
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
