"""How long evaluation's bootstrap intervals and comparison take on a COCO-sized test set.

    .venv/bin/python -m bench.eval_bootstrap --images 5000 --resamples 1000

Builds a seeded synthetic corpus (N images, 5 references of 8-14 words each, a prediction
sharing words with them), scores it once (BLEU, CIDEr-D, ROUGE-L, our tokenizer), then
times :func:`captioner.metrics.bootstrap.intervals` and
:func:`captioner.metrics.bootstrap.paired_bootstrap` against a second system. Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from captioner.metrics import score_captions
from captioner.metrics.bootstrap import ImageStats, intervals, paired_bootstrap

WORDS = [
    "a",
    "the",
    "man",
    "woman",
    "dog",
    "cat",
    "two",
    "on",
    "in",
    "with",
    "of",
    "is",
    "are",
    "sitting",
    "standing",
    "running",
    "grass",
    "street",
    "table",
    "red",
    "blue",
    "green",
    "white",
    "black",
    "small",
    "large",
    "next",
    "to",
    "near",
    "front",
    "people",
    "group",
    "plate",
    "food",
]


def corpus(n: int, seed: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    preds, refs = {}, {}
    for i in range(n):
        rs = [[rng.choice(WORDS) for _ in range(rng.randint(8, 14))] for _ in range(5)]
        hyp = rs[0][: rng.randint(3, 8)] + [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
        preds[i], refs[i] = " ".join(hyp), [" ".join(r) for r in rs]
    return preds, refs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    preds, refs = corpus(args.images, args.seed)
    other = {i: " ".join(reversed(c.split())) for i, c in preds.items()}
    t0 = time.perf_counter()
    a = score_captions(preds, refs, metrics=("bleu", "cider", "rouge"), tokenizer="ours", nltk_cross_check=False)
    b = score_captions(other, refs, metrics=("bleu", "cider", "rouge"), tokenizer="ours", nltk_cross_check=False)
    scoring = (time.perf_counter() - t0) / 2
    sa, sb = ImageStats.from_scores(a), ImageStats.from_scores(b)
    t0 = time.perf_counter()
    intervals(sa, args.resamples, args.seed)
    boot = time.perf_counter() - t0
    t0 = time.perf_counter()
    paired_bootstrap(sa, sb, a.metrics, b.metrics, args.resamples, args.seed)
    paired = time.perf_counter() - t0
    row = {
        "images": args.images,
        "resamples": args.resamples,
        "scoring_s": round(scoring, 3),
        "intervals_s": round(boot, 3),
        "paired_s": round(paired, 3),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
