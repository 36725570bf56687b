"""The int8 encoder's quality gates on the shipped model: held-out scenes and real photos.

    python -m bench.int8_quality                     # 300 held-out scenes, ~2-4 min
    python -m bench.int8_quality --scenes 1000 --method percentile

Renders ``--scenes`` test scenes with a seed the shipped weights were not trained on
(``--seed``, default 7), captions them (greedy) with the fp32 and the int8 ONNX Runtime
encoders of the same checkpoint, and reports the share of identical captions (gate: >= 97 %),
the feature cosine (mean, min) and the out-of-domain flag on real photos (tests/data and
scikit-image's astronaut, chelsea, coffee, rocket and horse; gate: unchanged on every one).
The int8 encoder is the checkpoint's exported ``graphs/encoder-int8.onnx``; ``--method`` and
``--calibration N`` (the first N of the checkpoint's calibration images) try other recipes:
the int8 graph is then quantised in memory from its ``encoder.onnx`` (needs the torch side
installed: ``captioner.model.quantize``), not written.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def encode_all(model, batch: np.ndarray) -> np.ndarray:
    return np.concatenate([model.encode(batch[i : i + 32]) for i in range(0, len(batch), 32)])  # (N, F)


def in_memory_int8(fp32, ckpt: Path, method: str | None, count: int | None):
    """A Captioner on ``ckpt`` whose encoder session runs an int8 graph quantised here from
    its fp32 graph, with ``method`` on the first ``count`` calibration images; its
    calibration set's size."""
    from captioner import Captioner
    from captioner.model import quantize
    from captioner.runtime.graphs import ENCODER, session

    images = quantize.read_calibration(ckpt) or []
    images = images[:count] if count else images
    if not images:
        raise SystemExit(f"error: {ckpt} has no calibration images")
    calib = quantize.calibration_set(images, fp32.preprocessing)
    graph = quantize.quantize_graph(
        fp32.graphs.file(ENCODER).read_bytes(), calib.tensors(), method or quantize.DEFAULT_METHOD, calib.exclude
    )
    model = Captioner.load(ckpt, precision="fp32")
    model.encoder.session = session(graph, model.encoder.threads)  # the same inputs and outputs
    model.encoder.precision = "int8"
    return model, calib.count


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("int8_quality", __doc__)
    p.add_argument("--scenes", type=int, default=300, help="held-out scenes (default 300)")
    p.add_argument("--seed", type=int, default=7, help="their seed (default 7; the weights were trained on 0)")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default=None, help="calibration method")
    p.add_argument("--calibration", type=int, default=None, metavar="N", help="use the first N calibration images")
    args = p.parse_args(argv)
    common.apply_threads(args)
    from captioner import Captioner

    info = common.machine_info()
    common.header("int8_quality: int8 vs fp32 captions", info)
    ckpt = common.resolve_checkpoint(args.checkpoint)
    fp32 = Captioner.load(ckpt, precision="fp32")
    t = time.perf_counter()
    if args.method or args.calibration:
        int8, calibration_images = in_memory_int8(fp32, ckpt, args.method, args.calibration)
    else:
        int8 = Captioner.load(ckpt, precision="int8")
        calibration_images = fp32.graphs.manifest.get("int8", {}).get("check", {}).get("images")
    build_s = time.perf_counter() - t
    if int8.precision != "int8":
        raise SystemExit(f"error: the int8 encoder is not in use: {int8.describe()['runtime']['reasons']}")

    from captioner.metrics.scene import scene_accuracy

    names, jpegs, truth = scenes(args.scenes, args.seed)
    held = np.stack([fp32.preprocess(b) for b in jpegs])  # (N, 3, S, S)
    a, b = encode_all(fp32, held), encode_all(int8, held)  # (N, F) or (N, L, C)
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)  # (N, F) or maps (N, L * C), as the int8 gate compares
    cos = (fa * fb).sum(axis=1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))  # (N,)
    caps32, caps8 = [r.caption for r in fp32.generate(a)], [r.caption for r in int8.generate(b)]
    same = float(np.mean([x == y for x, y in zip(caps32, caps8)]))
    acc32 = scene_accuracy(dict(zip(names, caps32)), truth).accuracy
    acc8 = scene_accuracy(dict(zip(names, caps8)), truth).accuracy
    pics = photos()
    photo_inputs = np.stack([fp32.preprocess(b) for b in pics.values()])  # (P, 3, S, S); raises if unreadable
    flags = {
        name: (r.in_domain, s.in_domain)
        for name, r, s in zip(pics, fp32.generate(fp32.encode(photo_inputs)), int8.generate(int8.encode(photo_inputs)))
    }
    unchanged = sum(x == y for x, y in flags.values())
    result = {
        "scenes": args.scenes,
        "seed": args.seed,
        "method": args.method or "the checkpoint's graph",
        "calibration_images": calibration_images,
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
