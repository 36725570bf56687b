"""The int8 encoder's quality gates on the shipped model: held-out scenes and real photos.

    python -m bench.int8_quality                     # 300 held-out scenes, ~2-4 min
    python -m bench.int8_quality --scenes 1000 --method percentile

Renders ``--scenes`` test scenes with a seed the shipped weights were not trained on
(``--seed``, default 7), captions them (greedy) with the fp32 and the int8 ONNX Runtime
encoders of the same checkpoint, and reports the share of identical captions (gate: >= 97 %),
the feature cosine (mean, min) and the out-of-domain flag on real photos (tests/data and
scikit-image's astronaut, chelsea, coffee, rocket and horse; gate: unchanged on every one).
``--method`` and ``--calibration N`` (the first N of the checkpoint's calibration images)
try other recipes; the int8 graph is then built in memory, not cached.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import common

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "horse")


def photos() -> dict[str, bytes]:
    """Real photos as JPEG bytes: the test photos and scikit-image's, when installed."""
    out = {p.name: p.read_bytes() for p in sorted((common.ROOT / "tests" / "data").glob("*.jpg"))}
    try:
        import skimage.data
        from PIL import Image
    except ImportError:
        print("(scikit-image is not installed: its photos are left out)", file=sys.stderr)
        return out
    for name in PHOTOS:
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buf, format="JPEG", quality=95)
        out[f"skimage:{name}"] = buf.getvalue()
    return out


def scenes(n: int, seed: int):
    """(file names, JPEG bytes, ground truth) of ``n`` freshly rendered test scenes."""
    from captioner.metrics.scene import SceneTruth
    from captioner.training.scenes import generate_scenes

    with tempfile.TemporaryDirectory() as tmp:
        generate_scenes(tmp, {"test": n}, seed=seed, progress=False)
        paths = sorted((Path(tmp) / "images" / "test").glob("*.jpg"))
        names = [f"test/{p.name}" for p in paths]  # file names as the ground truth has them
        return names, [p.read_bytes() for p in paths], SceneTruth.load(tmp, "test")


def encode_all(model, batch: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.encode(batch[i : i + 32]) for i in range(0, len(batch), 32)])  # (N, F)


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("int8_quality", __doc__)
    p.add_argument("--scenes", type=int, default=300, help="held-out scenes (default 300)")
    p.add_argument("--seed", type=int, default=7, help="their seed (default 7; the weights were trained on 0)")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default=None, help="calibration method")
    p.add_argument("--calibration", type=int, default=None, metavar="N", help="use the first N calibration images")
    args = p.parse_args(argv)
    common.apply_threads(args)
    from captioner import Captioner, runtime
    from captioner.runtime import quantize

    info = common.machine_info()
    common.header("int8_quality: int8 vs fp32 captions", info)
    ckpt = common.resolve_checkpoint(args.checkpoint)
    fp32 = Captioner.load(ckpt, device="cpu", precision="fp32")
    t = time.perf_counter()
    if args.method or args.calibration:
        images = quantize.read_calibration(ckpt) or []
        images = images[: args.calibration] if args.calibration else images
        base = fp32._calibration(images)
        calib = runtime.Calibration(base.digest, base.count, base.tensors, args.method or quantize.DEFAULT_METHOD)
        int8 = Captioner.load(ckpt, device="cpu", precision="fp32")
        int8._fast = runtime.OnnxPath(True, "int8", calib)
    else:
        int8 = Captioner.load(ckpt, device="cpu", precision="int8")
    int8.prepare_fast()
    build_s = time.perf_counter() - t
    if int8.precision != "int8":
        raise SystemExit(f"error: the int8 encoder is not in use: {int8.describe()['runtime']['reasons']}")

    from captioner.metrics.scene import scene_accuracy

    names, jpegs, truth = scenes(args.scenes, args.seed)
    held = torch.stack([fp32.preprocess(b) for b in jpegs])  # (N, 3, S, S)
    a, b = encode_all(fp32, held), encode_all(int8, held)  # (N, F)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    caps32, caps8 = [r.caption for r in fp32.generate(a)], [r.caption for r in int8.generate(b)]
    same = float(np.mean([x == y for x, y in zip(caps32, caps8)]))
    acc32 = scene_accuracy(dict(zip(names, caps32)), truth).accuracy
    acc8 = scene_accuracy(dict(zip(names, caps8)), truth).accuracy
    pics = photos()
    flags = {
        name: (r.in_domain, s.in_domain)
        for name, r, s in zip(
            pics, fp32.caption_detailed(list(pics.values())), int8.caption_detailed(list(pics.values()))
        )
    }
    unchanged = sum(x == y for x, y in flags.values())
    result = {
        "scenes": args.scenes,
        "seed": args.seed,
        "method": args.method or quantize.DEFAULT_METHOD,
        "calibration_images": int8._fast.calibration.count if int8._fast.calibration else None,
        "build_s": round(build_s, 1),
        "identical_captions": round(same, 4),
        "scene_accuracy_fp32": round(acc32, 4),
        "scene_accuracy_int8": round(acc8, 4),
        "cosine_mean": round(float(cos.mean()), 4),
        "cosine_min": round(float(cos.min()), 4),
        "photos_in_domain_fp32_int8": flags,
        "photos_flag_unchanged": f"{unchanged}/{len(flags)}",
        "gate_captions_97pct": same >= 0.97,
        "gate_photos_unchanged": unchanged == len(flags),
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    out = common.write_json("int8_quality", {"machine": info, **result}, args.json)
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
