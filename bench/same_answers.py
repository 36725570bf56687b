"""Same answers from the torch-free runtime and the PyTorch reference, on many held-out scenes.

    python -m bench.same_answers --scenes 200

For each shipped model: held-out scenes of an unseen seed plus the test photos, greedy and
beam 3; prints token mismatches and the largest differences (docs/performance.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from captioner.model.agreement import compare
from captioner.training.scenes import generate_scenes

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=424242)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_scenes(Path(tmp), {"test": args.scenes}, seed=args.seed, progress=False)
        images = sorted((Path(tmp) / "images" / "test").glob("*.jpg")) + sorted((ROOT / "tests" / "data").glob("*.jpg"))
        for model in ("default", "pooled"):
            got = compare(ROOT / "weights" / model, images)
            print(
                f"{model}: {got.captions} captions ({len(images)} images x greedy, beam 3), "
                f"{len(got.token_mismatches)} token mismatches; max |diff| score {got.max_score:.2e}, "
                f"confidence {got.max_confidence:.2e}, word log-prob {got.max_logprob:.2e}, "
                f"attention {got.max_attention:.2e}"
            )
            for line in got.token_mismatches[:10]:
                print("  ", line)


if __name__ == "__main__":
    main()
