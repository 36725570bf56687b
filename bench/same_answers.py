"""Same answers from the torch-free runtime and the PyTorch reference, on many held-out scenes.

    python -m bench.same_answers --scenes 200

For each shipped model: held-out scenes of an unseen seed plus the test photos, greedy and
beam 3; prints token mismatches and the largest differences (docs/performance.md). Then the
runtime against itself: the decoder's start from the encoder graph (``encode_started``, at
the checkpoint's own precision) against start.onnx on the same features (``generate(features)``).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner import Captioner
from captioner.model.agreement import Agreement, compare
from captioner.options import CaptionOptions
from captioner.training.scenes import generate_scenes

ROOT = Path(__file__).resolve().parents[1]


def fused_agreement(checkpoint: Path, images: Sequence[Path], batch_size: int = 32) -> Agreement:
    """``generate(encode_started(x))`` against ``generate(encode(x))``, greedy and beam 3."""
    model = Captioner.load(checkpoint)
    out = Agreement()
    for lo in range(0, len(images), batch_size):
        chunk = images[lo : lo + batch_size]
        x = np.stack([model.preprocess(str(p)) for p in chunk])  # (B, 3, S, S)
        started, features = model.encode_started(x), model.encode(x)
        for k in (1, 3):
            opts = CaptionOptions(beam_size=k)
            a = model.generate(started, opts, attention=model.attends)
            b = model.generate(features, opts, attention=model.attends)
            for p, ra, rb in zip(chunk, a, b):
                out.add(f"{p.name} beam {k}", ra, rb)
    return out


def report(what: str, got: Agreement, images: int) -> None:
    print(
        f"{what}: {got.captions} captions ({images} images x greedy, beam 3), "
        f"{len(got.token_mismatches)} token mismatches; max |diff| score {got.max_score:.2e}, "
        f"confidence {got.max_confidence:.2e}, word log-prob {got.max_logprob:.2e}, "
        f"attention {got.max_attention:.2e}"
    )
    for line in got.token_mismatches[:10]:
        print("  ", line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=424242)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_scenes(Path(tmp), {"test": args.scenes}, seed=args.seed, progress=False)
        images = sorted((Path(tmp) / "images" / "test").glob("*.jpg")) + sorted((ROOT / "tests" / "data").glob("*.jpg"))
        for model in ("default", "pooled"):
            report(f"{model}, runtime vs reference", compare(ROOT / "weights" / model, images), len(images))
            report(f"{model}, fused vs unfused start", fused_agreement(ROOT / "weights" / model, images), len(images))


if __name__ == "__main__":
    main()
