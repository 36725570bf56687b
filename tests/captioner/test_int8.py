"""The int8 encoder (captioner.model.quantize): agreement with fp32 on held-out scenes,
the graph cache's key, and the fallback to fp32.

Agreement uses the shipped int8 model (weights/pooled, its decoder trained on int8
features) and its calibration set; the cache and fallback
mechanics use a tiny CNN so that each quantisation takes a fraction of a second.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from captionkit import TINY_PRE, TinyEncoder
from PIL import Image

from captioner import Captioner
from captioner.model import ReferenceCaptioner, quantize
from captioner.model import onnx_encoder as onnx_mod
from captioner.runtime import graphs

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


def tiny(calibration: list[bytes] | None, seed: int = 0):
    """The int8 ONNX Runtime encoder of a tiny CNN (training's int8 feature cache builds
    its encoder this way): (encoder or None, reason, the PyTorch module)."""
    torch.manual_seed(seed)
    module = TinyEncoder().eval()
    calib = quantize.calibration_set(calibration, TINY_PRE) if calibration else None
    built, reason = onnx_mod.build_onnx_encoder(module, 32, calibration=calib)
    return built, reason, module


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(graphs.PRECISION_ENV, raising=False)
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


def batch_of(images: list[bytes]) -> torch.Tensor:
    return torch.from_numpy(np.stack([TINY_PRE(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]))


# ---------------------------------------------------------------- the cache key


def test_same_inputs_reuse_the_int8_graph(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = quantisations(monkeypatch)
    calib = jpegs(8, seed=1)
    first, reason, _ = tiny(calib)
    assert first is not None and first.precision == "int8", reason
    x = batch_of(jpegs(4, seed=9))  # (4, 3, 32, 32)
    a = first(x)
    files = int8_files(cache)
    assert len(calls) == 1 and len(files) == 1 and (cache / (files[0] + ".sha256")).is_file()
    second, _, _ = tiny(calib)  # same weights (seed), same calibration images
    assert second is not None and len(calls) == 1 and int8_files(cache) == files  # read back, not quantised again
    assert torch.equal(a, second(x))


def test_other_calibration_or_weights_make_a_new_graph(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = quantisations(monkeypatch)
    calib = jpegs(8, seed=1)
    tiny(calib)
    tiny(calib[:-1] + jpegs(1, seed=2))  # one calibration image changed
    assert len(calls) == 2 and len(int8_files(cache)) == 2
    tiny(calib, seed=5)  # other weights, same calibration images
    assert len(calls) == 3 and len(int8_files(cache)) == 3


def test_calibration_file_round_trip(tmp_path: Path) -> None:
    images = jpegs(3, seed=4)
    path = quantize.write_calibration(tmp_path, images)
    assert path.name == quantize.CALIBRATION
    assert quantize.read_calibration(tmp_path) == images
    assert quantize.read_calibration(tmp_path / "missing") is None
    prep = TINY_PRE.to_dict()
    assert quantize.calibration_digest(images, prep) != quantize.calibration_digest(images[::-1], prep)


# ---------------------------------------------------------------- choosing and the gate


def test_precision_comes_from_argument_env_then_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(graphs.PRECISION_ENV, raising=False)
    assert graphs.precision_requested(None, {}) == "fp32"
    assert graphs.precision_requested(None, {"precision": "int8"}) == "int8"
    monkeypatch.setenv(graphs.PRECISION_ENV, "FP32")
    assert graphs.precision_requested(None, {"precision": "int8"}) == "fp32"
    assert graphs.precision_requested("int8", {}) == "int8"
    with pytest.raises(ValueError, match="int8, fp32"):
        graphs.precision_requested("int4")


def test_quantisation_unavailable_is_a_reason_not_a_crash(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # import fails
    built, reason, _ = tiny(jpegs(8, seed=1))
    assert built is None and "onnxruntime.quantization" in reason and int8_files(cache) == []


def test_the_int8_gate_needs_both_the_mean_and_the_lowest_cosine() -> None:
    """Int8Tolerance passes only when the mean cosine AND every image's cosine are high enough."""
    tol = quantize.Int8Tolerance(min_mean_cosine=0.97, min_cosine=0.90)
    ref = torch.eye(4)  # four orthogonal feature rows: a cosine is set by how much of row i is kept
    close = ref.clone()
    close[:, 0] += 0.05  # every row nearly the same: mean and min high
    one_off = ref.clone()
    one_off[0] = torch.tensor([0.6, 0.8, 0.0, 0.0])  # one row at cosine 0.6: mean 0.9, min 0.6
    assert tol.check(ref, close)[0]
    ok, mean, low = tol.check(ref, one_off)
    assert not ok and low < tol.min_cosine and mean < tol.min_mean_cosine
    slightly = ref.clone()
    slightly[:, 1] += 0.33  # all rows at cosine ~0.95: min passes 0.90, the mean fails 0.97
    ok, mean, low = tol.check(ref, slightly)
    assert not ok and low >= tol.min_cosine and mean < tol.min_mean_cosine
    lenient = quantize.Int8Tolerance(min_mean_cosine=0.5, min_cosine=0.7)
    ok, mean, low = lenient.check(ref, one_off)  # the mean passes 0.5, the lowest fails 0.7
    assert not ok and mean >= 0.5 and low < 0.7


def test_export_leaves_out_an_int8_encoder_that_fails_its_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from captioner.model import export

    strict = quantize.Int8Tolerance(min_mean_cosine=1.01, min_cosine=0.0)  # nothing passes
    monkeypatch.setattr(quantize, "INT8_TRAINED_TOLERANCE", strict)  # POOLED's decoder learned int8 features
    folder = export.export_graphs(POOLED, tmp_path / "graphs")
    manifest = json.loads((folder / graphs.MANIFEST).read_text())
    assert graphs.ENCODER_INT8 not in manifest["files"] and not (folder / graphs.ENCODER_INT8).exists()
    assert "drifts too far" in manifest["int8"]["reason"] and manifest["int8"]["check"]["images"] >= 64


# ---------------------------------------------------------------- the shipped int8 model (weights/pooled)


@pytest.fixture(scope="module")
def pooled_pair(tmp_path_factory: pytest.TempPathFactory):
    """weights/pooled (trained on int8 features) with its fp32 and its int8 encoder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPTIONER_CACHE_DIR", str(tmp_path_factory.mktemp("int8-cache")))
    mp.delenv(graphs.PRECISION_ENV, raising=False)
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
    model = ReferenceCaptioner.load(POOLED)
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
    x = np.stack([fp32.preprocess(b) for b in jpegs])  # (60, 3, 224, 224)
    a, b = fp32.encode(x), int8.encode(x)  # (60, 1280) each
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), dim=1)
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
    model = ReferenceCaptioner.load(POOLED)
    assert model.path is not None
    folder = model.save(tmp_path / "copy")
    assert quantize.read_calibration(folder) == quantize.read_calibration(model.path)
    assert ReferenceCaptioner.load(folder).metadata["precision"] == "int8"


def test_service_setting_takes_int8_or_fp32_only() -> None:
    from pydantic import ValidationError

    from captioner.service.settings import Settings

    with pytest.raises(ValidationError, match="precision must be one of int8, fp32"):
        Settings(precision="int4")
    assert Settings(precision=" FP32 ").precision == "fp32"
    assert Settings(precision="").precision is None  # the checkpoint's choice
