"""Training epoch time: cached features against recomputing them every batch.

    python -m bench.train                          # 256 scene images x 5 captions, ~2-3 min
    python -m bench.train --images 1000 --recompute-batches 4

Same data, same decoder (``TrainConfig``'s default size: embedding and image projection
256, LSTM hidden 512; ``--embed-dim``/``--hidden-dim`` to change), same optimiser and
batch size (128 caption pairs, ``TrainConfig``'s default); the only difference is where a
batch's image features come from:

* **cached**: ``captioner.training.features.FeatureCache`` encodes every image once (timed
  separately: a one-time cost, and reading the cache back at the next run is timed too);
  an epoch indexes the (N, 1280) matrix;
* **recompute, eager** (the tutorials' way): every batch decodes its images from disk,
  preprocesses them and runs the frozen encoder forward in eager PyTorch, once per
  caption pair;
* **recompute, ONNX Runtime**: the same with the fast encoder, to show that the cache
  wins by avoiding the work, not by avoiding slow code.

Recompute epochs are slow, so only their first ``--recompute-batches`` batches are timed
and the epoch time is that per-batch time times the number of batches (stated in the
table). Cached epochs are timed whole (the best of ``--cached-epochs``).

Target (issue "Performance"): an epoch with the cache >= 20x faster than recomputing.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from . import common


def scenes_dataset(n: int) -> Path:
    """A built-in scenes training split of ``n`` images under bench/.cache (reused)."""
    from captioner.training.scenes import generate_scenes

    out = common.SCRATCH / f"scenes-{n}"
    if not (out / "captions_train.json").exists():
        generate_scenes(out, {"train": n}, seed=0, progress=False, overwrite=True)
    return out


def read_pairs(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """(image paths, image index of each caption, captions) from the COCO-format train file."""
    coco = json.loads((folder / "captions_train.json").read_text(encoding="utf-8"))
    images = sorted(coco["images"], key=lambda im: im["id"])
    row = {im["id"]: i for i, im in enumerate(images)}
    paths = [str(folder / "images" / im["file_name"]) for im in images]
    anns = sorted(coco["annotations"], key=lambda a: a["id"])
    return paths, [row[a["image_id"]] for a in anns], [a["caption"] for a in anns]


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("train", __doc__, checkpoint=False)
    p.add_argument("--images", type=int, default=256, help="training images (5 captions each; default 256)")
    p.add_argument("--batch-size", type=int, default=128, help="caption pairs per step (default 128)")
    p.add_argument("--cached-epochs", type=int, default=2, help="cached epochs to time (default 2; best kept)")
    p.add_argument("--embed-dim", type=int, default=256, help="decoder word embedding size (default 256, as training)")
    p.add_argument("--hidden-dim", type=int, default=512, help="decoder hidden size (default 512, as training)")
    p.add_argument(
        "--recompute-batches",
        type=int,
        default=2,
        help="batches timed per recompute mode, extrapolated to an epoch (default 2)",
    )
    args = p.parse_args(argv)
    common.apply_threads(args)
    from captioner.decoder import CaptionDecoder, DecoderConfig
    from captioner.encoders import build_encoder
    from captioner.images import load_image
    from captioner.model.onnx_encoder import build_onnx_encoder
    from captioner.training.features import FeatureCache
    from captioner.vocab import Vocabulary

    info = common.machine_info()
    common.header("train: epoch time with the feature cache vs recomputing features", info)
    folder = scenes_dataset(args.images)
    paths, pair_image, captions = read_pairs(folder)
    vocab = Vocabulary.build(captions)
    seqs = [vocab.encode(c) for c in captions]
    T = max(len(s) for s in seqs)
    tokens = torch.tensor([s + [vocab.pad_id] * (T - len(s)) for s in seqs])  # (P, T)
    pair_image_t = torch.tensor(pair_image)  # (P,)
    encoder = build_encoder("efficientnet_lite0")
    preprocess = encoder.spec.preprocess
    print(
        f"{len(paths)} images, {len(captions)} caption pairs, vocabulary {len(vocab)}, batch {args.batch_size}",
        file=sys.stderr,
        flush=True,
    )

    # ------------------------------------------------------------ the one-time cache build
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FeatureCache(cache_dir, encoder, name="efficientnet_lite0")
        t = time.perf_counter()
        table, report = cache.build(paths, progress=False)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        table = FeatureCache(cache_dir, encoder, name="efficientnet_lite0").load(paths)
        reload_s = time.perf_counter() - t
    rows_of = torch.tensor(table.rows(paths))  # (N,) every scenes image is readable
    features = table.features[rows_of]  # (N, F) in path order

    def new_training():
        torch.manual_seed(0)
        dec = CaptionDecoder(
            DecoderConfig(
                vocab_size=len(vocab),
                feature_dim=encoder.feature_dim,
                embed_dim=args.embed_dim,
                hidden_dim=args.hidden_dim,
                img_proj_dim=args.embed_dim,
            )
        ).train()
        return dec, torch.optim.AdamW(dec.parameters(), lr=2e-3, weight_decay=0.01)

    def step(dec, opt, f: torch.Tensor, toks: torch.Tensor) -> None:
        loss = dec.loss(f, toks, vocab.pad_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(captions), generator=gen)
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    # ------------------------------------------------------------ cached epochs
    cached_times = []
    for _ in range(args.cached_epochs):
        dec, opt = new_training()
        t = time.perf_counter()
        for b in batches:
            step(dec, opt, features[pair_image_t[b]], tokens[b])  # (B, F), (B, T)
        cached_times.append(time.perf_counter() - t)
    cached_epoch = min(cached_times)

    # ------------------------------------------------------------ recompute epochs (extrapolated)
    fast_encoder, reason = build_onnx_encoder(encoder, preprocess.crop_size)
    forwards: dict[str, Any] = {"eager pytorch": encoder}
    if fast_encoder is not None:
        forwards["onnxruntime"] = fast_encoder
    else:
        print(f"no ONNX Runtime row: {reason}", file=sys.stderr)
    recompute = {}
    for name, forward in forwards.items():
        dec, opt = new_training()
        per_batch = []
        for b in batches[: args.recompute_batches]:
            t = time.perf_counter()
            x = torch.from_numpy(preprocess.batch([load_image(paths[int(i)]) for i in pair_image_t[b]]))  # (B, 3, H, W)
            with torch.inference_mode():
                f = forward(x).float()  # (B, F)
            step(dec, opt, f.clone(), tokens[b])
            per_batch.append(time.perf_counter() - t)
        recompute[name] = statistics.mean(per_batch) * len(batches)
        print(f"  recompute ({name}): {statistics.mean(per_batch):.2f} s per batch", file=sys.stderr, flush=True)

    rows = [
        {
            "mode": "cached features",
            "epoch_s": cached_epoch,
            "step_ms": 1000 * cached_epoch / len(batches),
            "measured": f"{args.cached_epochs} whole epochs, best",
            "x_cached": 1.0,
        }
    ]
    for name, sec in recompute.items():
        rows.append(
            {
                "mode": f"recompute every batch ({name})",
                "epoch_s": sec,
                "step_ms": 1000 * sec / len(batches),
                "measured": f"{min(args.recompute_batches, len(batches))} of {len(batches)} batches",
                "x_cached": sec / cached_epoch,
            }
        )
    print()
    print(
        common.format_table(
            rows,
            [
                ("mode", "features"),
                ("epoch_s", "epoch s"),
                ("step_ms", "ms/step"),
                ("x_cached", "x the cached epoch"),
                ("measured", "measured"),
            ],
        )
    )
    print(
        f"\none-time cache build: {build_s:.1f} s for {len(paths)} images ({report.summary()}); "
        f"reading it back: {reload_s:.2f} s"
    )
    if "eager pytorch" in recompute:
        print(
            f"target cached epoch >= 20x faster than recomputing (eager): "
            f"{recompute['eager pytorch'] / cached_epoch:.0f}x"
        )
    out = common.write_json(
        "train",
        {
            "machine": info,
            "load_average_end": common.machine_info()["load_average"],
            "images": len(paths),
            "pairs": len(captions),
            "vocab": len(vocab),
            "batch_size": args.batch_size,
            "steps_per_epoch": len(batches),
            "decoder": {"embed_dim": args.embed_dim, "hidden_dim": args.hidden_dim},
            "cache_build_s": build_s,
            "cache_read_s": reload_s,
            "cached_epochs_s": cached_times,
            "rows": rows,
        },
        args.json,
    )
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
