"""The int8 encoder (captioner.runtime.quantize): agreement with fp32 on held-out scenes,
the graph cache's key, and the fallback to fp32.

Agreement uses the shipped int8 model (weights/pooled, its decoder trained on int8
features) and its calibration set; the cache and fallback
mechanics use a tiny CNN so that each quantisation takes a fraction of a second.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from captionkit import TINY_PRE, tiny_captioner
from PIL import Image

from captioner import Captioner, runtime
from captioner.runtime import onnx as onnx_mod
from captioner.runtime import quantize

DATA = Path(__file__).resolve().parents[1] / "data"
POOLED = Path(__file__).resolve().parents[2] / "weights" / "pooled"  # the shipped int8 model
HELD_OUT_SEED = 7  # the shipped weights were trained on seed 0


def jpegs(n: int, seed: int) -> list[bytes]:
    """``n`` random 48x48 JPEGs (smooth blobs, so they compress like pictures)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((48, 48), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def tiny(calibration: list[bytes] | None, seed: int = 0, precision: str = "int8") -> Captioner:
    return tiny_captioner(seed, fast=True, precision=precision, calibration=calibration)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(quantize.PRECISION_ENV, raising=False)
    return tmp_path / "onnx"


def quantisations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of the quantiser (one per int8 graph built rather than read back)."""
    calls: list[int] = []
    real = onnx_mod.quantize_graph

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_mod, "quantize_graph", counted)
    return calls


def int8_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*-int8-*.onnx"))


# ---------------------------------------------------------------- the cache key


def test_same_inputs_reuse_the_int8_graph(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = quantisations(monkeypatch)
    calib = jpegs(8, seed=1)
    first = tiny(calib)
    x = torch.stack([first.preprocess(b) for b in jpegs(4, seed=9)])  # (4, 3, 32, 32)
    a = first.encode(x)
    assert first.describe()["precision"] == "int8" and len(calls) == 1
    files = int8_files(cache)
    assert len(files) == 1 and (cache / (files[0] + ".sha256")).is_file()
    second = tiny(calib)  # same weights (seed), same calibration images
    b = second.encode(x)
    assert len(calls) == 1 and int8_files(cache) == files  # read back, not quantised again
    assert second.describe()["precision"] == "int8"
    assert torch.equal(a, b)


def test_other_calibration_or_weights_make_a_new_graph(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = quantisations(monkeypatch)
    calib = jpegs(8, seed=1)
    tiny(calib).prepare_fast()
    tiny(calib[:-1] + jpegs(1, seed=2)).prepare_fast()  # one calibration image changed
    assert len(calls) == 2 and len(int8_files(cache)) == 2
    tiny(calib, seed=5).prepare_fast()  # other weights, same calibration images
    assert len(calls) == 3 and len(int8_files(cache)) == 3


def test_calibration_file_round_trip(tmp_path: Path) -> None:
    images = jpegs(3, seed=4)
    path = quantize.write_calibration(tmp_path, images)
    assert path.name == quantize.CALIBRATION
    assert quantize.read_calibration(tmp_path) == images
    assert quantize.read_calibration(tmp_path / "missing") is None
    prep = TINY_PRE.to_dict()
    assert quantize.calibration_digest(images, prep) != quantize.calibration_digest(images[::-1], prep)


# ---------------------------------------------------------------- choosing and falling back


def test_precision_comes_from_argument_env_then_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(quantize.PRECISION_ENV, raising=False)
    assert runtime.precision_requested(None, {}) == "fp32"
    assert runtime.precision_requested(None, {"precision": "int8"}) == "int8"
    monkeypatch.setenv(quantize.PRECISION_ENV, "FP32")
    assert runtime.precision_requested(None, {"precision": "int8"}) == "fp32"
    assert runtime.precision_requested("int8", {}) == "int8"
    with pytest.raises(ValueError, match="int8, fp32"):
        runtime.precision_requested("int4")


def test_quantisation_unavailable_falls_back_to_fp32(
    cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="captioner.runtime"):
        model = tiny(jpegs(8, seed=1))
        assert model.prepare_fast()  # the fp32 ONNX Runtime encoder still runs
    info = model.describe()
    status = info["runtime"]
    assert status["encoder"] == "onnxruntime" and info["precision"] == "fp32" == model.precision
    assert info["precision_requested"] == "int8"
    assert "onnxruntime.quantization" in status["reasons"]["int8"]
    assert "fp32, not int8" in caplog.text and int8_files(cache) == []
    x = torch.stack([model.preprocess(b) for b in jpegs(2, seed=9)])  # (2, 3, 32, 32)
    with torch.inference_mode():
        reference = model.encoder(x)  # (2, 16)
    assert float((model.encode(x) - reference).abs().max()) <= onnx_mod.FEATURE_TOLERANCE.max_abs


def test_int8_without_calibration_images_runs_fp32(cache: Path) -> None:
    model = tiny(None)
    model.prepare_fast()
    info = model.describe()
    assert info["precision"] == "fp32" and "calibration" in info["runtime"]["reasons"]["int8"]


def test_fp32_needs_no_calibration(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = quantisations(monkeypatch)
    model = tiny(jpegs(4, seed=1), precision="fp32")
    model.prepare_fast()
    assert model.describe()["precision"] == "fp32" and "int8" not in model.describe()["runtime"]["reasons"]
    assert calls == []


# ---------------------------------------------------------------- the shipped int8 model (weights/pooled)


@pytest.fixture(scope="module")
def pooled_pair(tmp_path_factory: pytest.TempPathFactory):
    """weights/pooled (trained on int8 features) with its fp32 and its int8 encoder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPTIONER_CACHE_DIR", str(tmp_path_factory.mktemp("int8-cache")))
    mp.delenv(quantize.PRECISION_ENV, raising=False)
    try:
        yield Captioner.load(POOLED, precision="fp32"), Captioner.load(POOLED)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def held_out_scenes(tmp_path_factory: pytest.TempPathFactory):
    """(JPEG bytes, ground truths) of 60 scenes of a seed no shipped model was trained on."""
    from captioner.metrics.scene import SceneTruth
    from captioner.training.scenes import generate_scenes

    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, {"test": 60}, seed=HELD_OUT_SEED, progress=False)
    truth = SceneTruth.load(out, "test")
    paths = sorted((out / "images" / "test").glob("*.jpg"))
    return [p.read_bytes() for p in paths], [truth.get(f"test/{p.name}") for p in paths], truth.words


def test_the_int8_model_serves_int8_by_default_and_carries_its_calibration_set() -> None:
    model = Captioner.load(POOLED, fast=False)
    assert model.metadata["precision"] == "int8" and model.metadata["train_config"]["precision"] == "int8"
    assert model.path is not None
    images = quantize.read_calibration(model.path)
    assert images is not None and len(images) == model.metadata["calibration"]["images"] >= 64


def test_int8_features_agree_with_fp32_and_the_int8_trained_model_loses_nothing_at_int8(
    pooled_pair, held_out_scenes
) -> None:
    from captioner.metrics.scene import check_caption

    fp32, int8 = pooled_pair
    assert int8.describe()["precision"] == "int8" and fp32.describe()["precision"] == "fp32"
    jpegs, truths, words = held_out_scenes
    x = torch.stack([fp32.preprocess(b) for b in jpegs])  # (60, 3, 224, 224)
    a, b = fp32.encode(x), int8.encode(x)  # (60, 1280) each
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert float(cos.mean()) >= 0.95 and float(cos.min()) >= 0.8
    right = {
        name: np.mean([check_caption(r.caption, t, words).correct for r, t in zip(model.generate(f), truths)])
        for name, model, f in (("fp32", fp32, a), ("int8", int8, b))
    }
    # The gate, measured on 1,000 held-out scenes (docs/performance.md): this model at int8
    # 71.3 %, the fp32-trained classic model at fp32 69.8 %. Trained on int8 features, the
    # decoder is at home at int8; here a regression bound on 60 scenes.
    assert right["int8"] >= 0.5 and right["int8"] >= right["fp32"] - 0.1, right


def test_out_of_domain_flag_unchanged_on_photos(pooled_pair) -> None:
    fp32, int8 = pooled_pair
    photos = [(DATA / n).read_bytes() for n in ("chelsea.jpg", "coffee.jpg")]
    flags32 = [r.in_domain for r in fp32.caption_detailed(photos)]
    flags8 = [r.in_domain for r in int8.caption_detailed(photos)]
    assert flags32 == flags8 == [False, False]


def test_saving_a_model_keeps_its_calibration_set(tmp_path: Path) -> None:
    model = Captioner.load(POOLED, fast=False)
    assert model.path is not None
    folder = model.save(tmp_path / "copy")
    assert quantize.read_calibration(folder) == quantize.read_calibration(model.path)
    assert Captioner.load(folder, fast=False).metadata["precision"] == "int8"


def test_service_setting_takes_int8_or_fp32_only() -> None:
    from pydantic import ValidationError

    from captioner.service.settings import Settings

    with pytest.raises(ValidationError, match="precision must be one of int8, fp32"):
        Settings(precision="int4")
    assert Settings(precision=" FP32 ").precision == "fp32"
    assert Settings(precision="").precision is None  # the checkpoint's choice
