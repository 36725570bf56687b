"""How far the shipped model's trust fields hold on fresh held-out scenes.

    python -m bench.trust --images 1000 --seed 7 --threads 1 --plot docs/reliability.png

Renders held-out scenes with a seed training did not use (the shipped weights trained on
seed 0), captions them once per ``no_repeat_ngram_size`` (scene accuracy with and without
the rule), and with the defaults reports the share in domain, the per-decile reliability
table (mean confidence against the rate of scene-correct captions) and, with ``--plot``,
the reliability diagram.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from captioner import Captioner
from captioner.metrics.scene import SceneTruth, check_caption
from captioner.options import CaptionOptions
from captioner.runtime.search import DEFAULT_NO_REPEAT_NGRAM
from captioner.training.scenes import generate_scenes
from captioner.training.trust_fit import encode_paths, plot_reliability, reliability_bins

from .common import apply_threads, base_parser, format_table, header, load_note, machine_info, write_json


def main() -> None:
    p = base_parser("trust", __doc__ or "")
    p.add_argument("--images", type=int, default=1000, help="held-out scenes to render (default: 1000)")
    p.add_argument("--seed", type=int, default=7, help="their seed; training used 0 (default: 7)")
    p.add_argument("--ngrams", default="0,2,3,4", help="no_repeat_ngram_size values to compare (default: 0,2,3,4)")
    p.add_argument("--plot", metavar="PNG", help="write the reliability diagram here")
    args = p.parse_args()
    apply_threads(args)
    info = machine_info()
    start_load = load_note()
    model = Captioner.load(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        generate_scenes(tmp, {"train": 0, "val": 0, "test": args.images}, args.seed, progress=False)
        truth = SceneTruth.load(tmp, "test")
        files = sorted((Path(tmp) / "images" / "test").glob("*.jpg"))
        t0 = time.perf_counter()
        features = encode_paths(model, files)  # (N, F)
        encode_s = time.perf_counter() - t0

    def judged(n: int | None) -> tuple[list, np.ndarray]:
        results = []
        for i in range(0, len(features), 100):
            results += model.generate(features[i : i + 100], CaptionOptions(no_repeat_ngram_size=n))
        right = [
            check_caption(r.caption, truth.get(f"test/{f.name}"), truth.words).correct  # type: ignore[arg-type]
            for f, r in zip(files, results)
        ]
        return results, np.array(right, float)

    accuracy = []
    for n in [int(v) for v in args.ngrams.split(",")]:
        _, right = judged(n)
        accuracy.append({"no_repeat_ngram_size": n, "scene_accuracy": round(float(right.mean()), 4)})
    results, right = judged(None)
    conf = np.array([r.confidence if r.confidence is not None else np.nan for r in results])
    inside = [r.in_domain for r in results]
    bins = reliability_bins(conf, right)
    summary = {
        "images": len(results),
        "seed": args.seed,
        "default_no_repeat_ngram_size": DEFAULT_NO_REPEAT_NGRAM,
        "scene_accuracy": round(float(right.mean()), 4),
        "mean_confidence": round(float(np.nanmean(conf)), 4),
        "in_domain": sum(1 for v in inside if v is True),
        "encode_seconds": round(encode_s, 1),
    }
    header("Trust on held-out scenes", info, f"{args.images} scenes, seed {args.seed}")
    print(
        format_table(accuracy, [("no_repeat_ngram_size", "no_repeat_ngram_size"), ("scene_accuracy", "scene accuracy")])
    )
    print()
    print(f"in domain: {summary['in_domain']} of {summary['images']}")
    rows = [{**b, "confidence": round(b["confidence"], 3), "right": round(b["right"], 3)} for b in bins]
    print(
        format_table(
            rows,
            [
                ("low", "from"),
                ("high", "to"),
                ("captions", "captions"),
                ("confidence", "mean conf."),
                ("right", "right"),
            ],
        )
    )
    if args.plot:
        title = f"Shipped weights, {len(results)} held-out scenes (seed {args.seed})"
        print(f"reliability diagram: {plot_reliability(conf, right, args.plot, title)}")
    out = write_json(
        "trust",
        {
            "machine": info,
            "load": {"start": start_load, "end": load_note()},
            "summary": summary,
            "accuracy": accuracy,
            "reliability": bins,
        },
        args.json,
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
