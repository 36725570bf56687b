"""Decoder-side time per image against the encoder's, on the shipped models, in process.

    python -m bench.decoder_share                   # weights/default and weights/pooled, ~1-2 min
    python -m bench.decoder_share --batch 32 --seconds 3

For each checkpoint, one batch of in-domain scenes (freshly rendered, seed 11) and one of
real photos (tests/data and scikit-image's, repeated to fill the batch), preprocessed once.
Every figure is the median in ms per image; a row's figures are measured interleaved (each
function once per round, round after round), so their ratios hold on a shared machine.

What moved where: the encoder graphs now also compute the decoder's start (memory and
initial state; for the attention default the 49 x 1280 -> 512 annotation projection), in
the same call on the encoder's threads; front ends call ``Captioner.encode_started`` and
pass its result to ``generate``, which then skips the start. So the start left the decoder
side and is inside ``encoder``; this bench shows it both ways:

* ``encoder``: ``encode_started`` (the CNN and the fused start: what a front end pays);
  ``cnn``: the same graph cut at ``features`` (the CNN alone, same threads); ``start in
  encoder`` = encoder - cnn; ``start.onnx``: the start in its own one-thread session, as
  ``generate(features)`` runs it.
* ``greedy`` / ``beam3`` / ``nbest3``: ``generate`` on the started batch (trust included,
  labels and attention off), greedy, beam 3 and the 3 best of beam 3; ``greedy share`` =
  greedy / encoder.
* ``share, start counted`` = (greedy + start in encoder) / cnn: the decoder side with the
  fused start counted as decoder work, against the CNN alone.
* ``unfused share`` = generate(features) / cnn: the route before the start moved (start.onnx
  on one thread, then the search), as ``greedy share`` was measured then.

Target (issue "Performance: serve the shipped default at the speed of its CNN"): greedy
decoding <= 10 % of the encoder's time at batch 32; beam 3 <= 1.15x greedy; the n-best list
no dearer than beam 3.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from . import common

CHECKPOINTS = ("weights/default", "weights/pooled")


def scene_jpegs(n: int, seed: int = 11) -> list[bytes]:
    """``n`` freshly rendered held-out scenes (cached under bench/.cache)."""
    from captioner.training.scenes import generate_scenes

    out = common.SCRATCH / f"decoder-share-scenes-{seed}-{n}"
    if not (out / "images" / "test").is_dir():
        generate_scenes(out, {"test": n}, seed=seed, progress=False, overwrite=True)
    return [p.read_bytes() for p in sorted((out / "images" / "test").glob("*.jpg"))[:n]]


def photo_jpegs(n: int) -> list[bytes]:
    """Real photos (out of the scenes' domain), repeated to ``n``."""
    from .int8_quality import photos

    found = list(photos().values())
    return [found[i % len(found)] for i in range(n)]


def _interleaved_ms(fns: dict, seconds: float, per: int) -> dict[str, float]:
    """Median ms per image of each of ``fns``, run in turn round after round (each once to
    warm up) for about ``seconds`` per function, so a load that comes and goes on a shared
    machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    end = time.perf_counter() + seconds * len(fns)
    while min(len(v) for v in times.values()) < 3 or time.perf_counter() < end:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(v) / per for name, v in times.items()}


def cnn_only(model):
    """A session of the model's encoder graph cut at ``features`` (the CNN without the fused
    start), on the encoder's threads."""
    import onnx

    from captioner.runtime.graphs import ENCODER, ENCODER_INT8, FEATURES, session

    name = ENCODER_INT8 if model.precision == "int8" else ENCODER
    cut = onnx.utils.Extractor(onnx.load(str(model.graphs.file(name)))).extract_model(["images"], [FEATURES])
    return session(cut.SerializeToString(), model.encoder.threads)


def measure(model, jpegs: list[bytes], seconds: float) -> dict:
    """ms per image: the fused encoder, the CNN alone, the start alone, and generate greedy /
    beam 3 / n-best 3 on the started batch (greedy also on plain features)."""
    from captioner.options import CaptionOptions

    batch = np.stack([model.preprocess(j) for j in jpegs])  # (B, 3, S, S)
    n = len(batch)
    started = model.encode_started(batch)
    cnn = cnn_only(model)
    feed = {"images": batch}
    fns = {
        "encoder_ms": functools.partial(model.encode_started, batch),
        "cnn_ms": functools.partial(cnn.run, None, feed),
        "start_onnx_ms": functools.partial(model.step.start, started.features),
        "unfused_greedy_ms": functools.partial(model.generate, started.features, CaptionOptions(beam_size=1)),
    }
    for name, options in (
        ("greedy", CaptionOptions(beam_size=1)),
        ("beam3", CaptionOptions(beam_size=3)),
        ("nbest3", CaptionOptions(beam_size=3, num_captions=3)),
    ):
        fns[f"{name}_ms"] = functools.partial(model.generate, started, options)
    row: dict = _interleaved_ms(fns, seconds, n)
    row["start_in_encoder_ms"] = row["encoder_ms"] - row["cnn_ms"]
    results = model.generate(started, CaptionOptions(beam_size=1))
    row["in_domain"] = sum(bool(r.in_domain) for r in results) / n
    row["words"] = statistics.mean(len(r.tokens) for r in results)
    row["greedy_share"] = row["greedy_ms"] / row["encoder_ms"]
    row["share_start_counted"] = (row["greedy_ms"] + row["start_in_encoder_ms"]) / row["cnn_ms"]
    row["unfused_share"] = row["unfused_greedy_ms"] / row["cnn_ms"]
    row["beam3_x_greedy"] = row["beam3_ms"] / row["greedy_ms"]
    row["nbest3_x_beam3"] = row["nbest3_ms"] / row["beam3_ms"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("decoder_share", __doc__, checkpoint=False)
    p.add_argument("--checkpoints", nargs="+", default=list(CHECKPOINTS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0, help="timing per figure (default 3)")
    args = p.parse_args(argv)
    common.apply_threads(args)
    from captioner import Captioner

    info = common.machine_info()
    common.header("decoder-side time per image vs the encoder's", info)
    sets = {"scenes": scene_jpegs(args.batch), "photos": photo_jpegs(args.batch)}
    rows = []
    for ckpt in args.checkpoints:
        model = Captioner.load(Path(ckpt))
        for kind, jpegs in sets.items():
            row = {
                "checkpoint": ckpt,
                "precision": model.precision,
                "images": kind,
                **measure(model, jpegs, args.seconds),
            }
            rows.append(row)
            print(f"  {ckpt} {kind}: {row}", file=sys.stderr, flush=True)
    cols = ["checkpoint", "precision", "images", "in_domain", "words", "encoder_ms", "cnn_ms", "start_in_encoder_ms"]
    cols += ["start_onnx_ms", "greedy_ms", "greedy_share", "share_start_counted", "unfused_greedy_ms", "unfused_share"]
    cols += ["beam3_ms", "beam3_x_greedy", "nbest3_ms", "nbest3_x_beam3"]
    shown = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print(common.format_table(shown, [(c, c.replace("_", " ")) for c in cols]))
    end = common.machine_info()["load_average"]
    print(f"\nload average {info['load_average']} -> {end}")
    out = common.write_json("decoder_share", {"machine": info, "load_average_end": end, "rows": rows}, args.json)
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
