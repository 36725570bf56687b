"""One image path: the same JPEG bytes give the same features through every entry point.

The five ways an image reaches the encoder (the HTTP service's decode + preprocess, folder
captioning, evaluation, training's feature cache, and the live encoding validation uses
while fine-tuning) all go through :mod:`captioner.pipeline`. On the PyTorch path
(:class:`~captioner.model.ReferenceCaptioner`) their features must agree bit for bit, for a small photo and for one large
enough for a large JPEG draft reduction (2000x1500: decoded at 1/4 scale). A feature
cache that decoded at full size, as it once did, would train the decoder on other features
than the ones it is served with.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner import Captioner
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.encoders import build_encoder
from captioner.folder import caption_folder
from captioner.model import ReferenceCaptioner
from captioner.service.captioning import CaptionService, GenerationOptions
from captioner.service.metrics import Metrics
from captioner.service.settings import Settings
from captioner.service.uploads import Upload
from captioner.training.datasets import load_dataset
from captioner.training.evaluate import caption_split
from captioner.training.features import FeatureCache, encode_images
from captioner.vocab import Vocabulary

SIZES = {"small.jpg": (640, 480), "large.jpg": (2000, 1500)}


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    """A smooth, photo-like JPEG (blurred noise plus gradients), so resampling matters."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(np.asarray(img, dtype=np.float32) * 0.8 + ramp, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {name: photo_jpeg(w, h, seed) for seed, (name, (w, h)) in enumerate(SIZES.items())}


@pytest.fixture(scope="module")
def folder(photos, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name, blob in photos.items():
        (folder / name).write_bytes(blob)
    return folder


@pytest.fixture(scope="module")
def model() -> Captioner:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    vocab = Vocabulary.build(["a red dog on a green background", "two blue cars"])
    encoder = build_encoder("efficientnet_lite0")
    config = DecoderConfig(
        vocab_size=len(vocab), feature_dim=encoder.feature_dim, embed_dim=8, hidden_dim=16, img_proj_dim=8, max_length=4
    )
    return ReferenceCaptioner(encoder, CaptionDecoder(config), vocab, device="cpu")


class Recorder:
    """Wraps ``model.encode`` to record, per image in batches of one, its features."""

    def __init__(self, model: Captioner) -> None:
        self.model = model
        self.features: list[np.ndarray] = []
        self._encode = model.encode

    def __enter__(self) -> Recorder:
        def encode(batch: np.ndarray) -> np.ndarray:
            out = self._encode(batch)  # (B, F)
            self.features.extend(out.copy())
            return out

        self.model.encode = encode  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.encode


def via_service(model: Captioner, photos: dict[str, bytes]) -> dict[str, np.ndarray]:
    service = CaptionService(model, Settings(), Metrics())
    out = {}
    try:
        for name, blob in photos.items():
            x = service._decode(Upload(name, blob, "image/jpeg"), name, time.monotonic() + 60)  # (3, H, W)
            with Recorder(model) as rec:
                service._run_batch(x[None], GenerationOptions(beam_size=1, max_length=4))
            out[name] = rec.features[0]
    finally:
        service.stop(timeout=5)
    return out


def via_folder(model: Captioner, folder: Path, tmp: Path) -> dict[str, np.ndarray]:
    with Recorder(model) as rec:
        summary = caption_folder(model, [folder], tmp / "captions.jsonl", batch_size=1, workers=0, progress=False)
    assert summary.done == len(SIZES)
    return dict(zip(sorted(SIZES), rec.features))  # the folder is captioned in sorted order


def via_evaluation(model: Captioner, folder: Path) -> dict[str, np.ndarray]:
    refs = folder / "captions_test.json"
    images = [{"id": i, "file_name": name} for i, name in enumerate(sorted(SIZES))]
    anns = [{"id": i, "image_id": i, "caption": "a red dog"} for i in range(len(SIZES))]
    refs.write_text(json.dumps({"images": images, "annotations": anns}))
    dataset = load_dataset(refs)
    with Recorder(model) as rec:
        split = caption_split(model, dataset, batch_size=1, workers=0, progress=False)
    assert not split.failed and len(split.pairs) == len(SIZES)
    return {Path(item.image_path).name: f for (item, _), f in zip(split.pairs, rec.features)}


def via_feature_cache(model: Captioner, folder: Path, tmp: Path) -> dict[str, np.ndarray]:
    cache = FeatureCache(tmp / "cache", model.encoder, batch_size=1, trace=False)
    paths = [str(folder / name) for name in SIZES]
    table, report = cache.build(paths, progress=False)
    assert not report.failed
    return {Path(p).name: table.features[row] for p, row in zip(paths, table.rows(paths))}


def via_validation(model: Captioner, folder: Path) -> dict[str, np.ndarray]:
    """Validation while fine-tuning encodes the split live, through ``encode_images``."""
    paths = [str(folder / name) for name in SIZES]
    feats, failed = encode_images(model.encoder, model.preprocessing, paths, batch_size=1, trace=False, progress=False)
    assert not failed
    return {Path(paths[i]).name: f for i, f in feats.items()}


def test_every_entry_point_gives_the_same_features(model, photos, folder, tmp_path):
    entries = {
        "service": via_service(model, photos),
        "folder": via_folder(model, folder, tmp_path),
        "evaluation": via_evaluation(model, folder),
        "feature cache": via_feature_cache(model, folder, tmp_path),
        "validation": via_validation(model, folder),
    }
    reference = entries["service"]
    assert set(reference) == set(SIZES)
    for entry, features in entries.items():
        assert set(features) == set(SIZES), entry
        for name in SIZES:
            assert features[name].shape == (model.decoder.config.feature_dim,)
            got = np.asarray(features[name])
            assert np.array_equal(got, reference[name]), f"{entry} differs from the service on {name}"


def test_jpegs_are_decoded_in_draft_mode(model, photos):
    """Both photos are decoded at a reduced scale whose sides stay >= resize_size (the
    draft rule), and that changes the input tensor, so the agreement above is not a
    coincidence of sizes: a full-size decode would give other features."""
    from captioner import pipeline
    from captioner.images import load_image

    pre = model.preprocessing
    for name, (width, height) in SIZES.items():
        scale = 1
        while scale < 8 and min(width, height) // (scale * 2) >= pre.resize_size:
            scale *= 2
        image = pipeline.decode(photos[name], pre)
        assert scale > 1 and image.size == (width // scale, height // scale), name
        full = pre(load_image(photos[name]))  # (3, S, S), decoded without draft
        assert not np.array_equal(model.preprocess(photos[name]), full), name
