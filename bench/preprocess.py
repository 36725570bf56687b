"""Where an image's preparation time goes, step by step, beside the encoder's share.

    python -m bench.preprocess                  # 640x480, 2000x1500 and 4000x3000 JPEGs, ~1 min
    python -m bench.preprocess --sizes 640x480 --seconds 2 --threads 1

For each JPEG size, milliseconds per image (median of repeated runs, one thread) for:

* ``read header``: ``Image.open`` and the header checks (what refuses a hostile file);
* ``decode full`` and ``decode draft``: pixels at full size, and with the draft rule of the
  one image path (the JPEG decoder's DCT scaling to the smallest power-of-two reduction
  that keeps both sides >= the model's input);
* ``resize+crop``: :meth:`Preprocess.resize_and_crop` on the draft-decoded image;
* ``normalise``: uint8 pixels -> the normalised float32 (3, S, S) tensor
  (:meth:`Preprocess.normalise_into`), beside the numpy version it replaced;
* ``prepare``: the whole :func:`captioner.pipeline.prepare` (bytes -> input tensor);
* ``encoder``: the encoder's share per image at batch 32 (ONNX Runtime, the same threads),
  so each step can be read against what it feeds.
"""

from __future__ import annotations

import io
import statistics

import numpy as np
import torch
from PIL import Image

from captioner import Captioner, pipeline
from captioner.images import load_image

from . import common


def _ms(fn, seconds: float) -> float:
    return 1000.0 * statistics.median(common.timed(fn, seconds, min_runs=5, warmup=2))


def _numpy_normalise(pixels: np.ndarray, pre) -> np.ndarray:
    """The normalisation as the first rounds wrote it (float (H, W, 3), then a transposed copy)."""
    std = np.asarray(pre.std, dtype=np.float32)
    x = pixels.astype(np.float32) * (1.0 / (255.0 * std)) - np.asarray(pre.mean, dtype=np.float32) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, H, W)


def steps(jpeg: bytes, model: Captioner, seconds: float) -> dict[str, float]:
    """Milliseconds per image of each preparation step for one JPEG."""
    pre = model.preprocessing
    draft = pipeline.draft_size(pre)
    drafted = load_image(jpeg, draft_size=draft)
    cropped = pre.resize_and_crop(drafted)
    pixels = np.array(cropped, dtype=np.uint8)  # (S, S, 3)
    out = np.empty((3, pre.crop_size, pre.crop_size), dtype=np.float32)  # (3, S, S)
    return {
        "read header": _ms(lambda: Image.open(io.BytesIO(jpeg)).size, seconds),
        "decode full": _ms(lambda: load_image(jpeg), seconds),
        "decode draft": _ms(lambda: load_image(jpeg, draft_size=draft), seconds),
        "resize+crop": _ms(lambda: pre.resize_and_crop(drafted), seconds),
        "normalise (numpy, before)": _ms(lambda: _numpy_normalise(pixels, pre), seconds),
        "normalise": _ms(lambda: pre.normalise_into(pixels, out), seconds),
        "prepare": _ms(lambda: pipeline.prepare(jpeg, pre), seconds),
    }


def encoder_ms(model: Captioner, seconds: float, batch: int = 32) -> float:
    size = model.preprocessing.crop_size
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)  # (B, 3, S, S)
    return _ms(lambda: pipeline.encode_batch(model, list(x)), seconds) / batch


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("preprocess", __doc__)
    p.add_argument("--sizes", nargs="+", default=["640x480", "2000x1500", "4000x3000"], metavar="WxH")
    p.add_argument("--seconds", type=float, default=1.5, help="time per measurement (default 1.5)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or 1)
    model = Captioner.load(common.resolve_checkpoint(args.checkpoint), threads=args.threads or 1)
    enc = encoder_ms(model, args.seconds)
    rows = []
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        (jpeg,) = common.make_jpegs(1, (w, h))
        row: dict = {"image": f"{w}x{h} ({len(jpeg) // 1024} KiB)", **steps(jpeg, model, args.seconds), "encoder": enc}
        row["prepare / encoder"] = row["prepare"] / enc
        rows.append(row)
    columns = [("image", "JPEG"), *((k, f"{k} ms") for k in rows[0] if k not in ("image", "prepare / encoder"))]
    columns.append(("prepare / encoder", "prepare / encoder"))
    common.header("Preparing one image, step by step (ms per image, one thread)", common.machine_info())
    print(common.format_table(rows, columns))
    out = common.write_json("preprocess", {"machine": common.machine_info(), "rows": rows}, args.json)
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
