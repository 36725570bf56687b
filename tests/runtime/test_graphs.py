"""A checkpoint's exported graphs: written by `captioner export`, checked at load, served.

On a small Lite0 checkpoint: the torch-free Captioner (graphs on ONNX Runtime) against the
PyTorch reference on photos; then what loading does with altered, truncated, stale and
missing graphs, and what export does with a graph that disagrees with PyTorch.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from captionkit import teach_checkpoint
from PIL import Image

from captioner import Captioner
from captioner.checkpoint import GRAPHS, WEIGHTS
from captioner.errors import CheckpointError
from captioner.model import ReferenceCaptioner
from captioner.model import export as export_mod
from captioner.model.onnx_encoder import FEATURE_TOLERANCE
from captioner.options import CaptionOptions
from captioner.runtime import graphs as graphs_mod

DATA = Path(__file__).resolve().parents[1] / "data"
DOCUMENTED_MAX_DIFF = 6e-6  # docs/performance.md: "features differ by at most 6e-6"


def photos() -> list[bytes]:
    """The two test photos plus two synthetic JPEGs (a gradient and noise), as bytes."""
    rng = np.random.default_rng(0)
    grad = np.linspace(0, 255, 320 * 240 * 3).reshape(240, 320, 3).astype(np.uint8)
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = [(DATA / "chelsea.jpg").read_bytes(), (DATA / "coffee.jpg").read_bytes()]
    for arr in (grad, noise):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.fixture(autouse=True)
def _hermetic_cache(tmp_path, monkeypatch):
    """Graphs exported for checkpoints without their own go to a per-test cache."""
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lite0_dir(tmp_path_factory) -> Path:
    """Real Lite0 encoder + a small random decoder with a 200-word vocabulary, exported."""
    words = [" ".join(f"word{i}" for i in range(196))]
    return teach_checkpoint(tmp_path_factory.mktemp("ckpt") / "lite0", [], words, max_length=12, export=True)


@pytest.fixture(scope="module")
def pair(lite0_dir):
    return Captioner.load(lite0_dir), ReferenceCaptioner.load(lite0_dir)


def test_the_graphs_give_the_reference_features_and_captions(pair):
    fast, plain = pair
    assert fast.describe()["runtime"]["encoder"] == "onnxruntime" and plain.runtime_status()["encoder"] == "pytorch"
    x = np.stack([plain.preprocess(b) for b in photos()])  # (4, 3, 224, 224)
    reference = plain.encode(x)  # (4, 1280)
    for batch in (x[:1], x):  # batch 1 and a batch of 4 through the dynamic batch axis
        got = fast.encode(batch)
        assert got.shape == (len(batch), 1280) and got.dtype == np.float32
        ok, diff, cos = FEATURE_TOLERANCE.check(torch.from_numpy(reference[: len(batch)]), torch.from_numpy(got))
        assert ok, f"max abs diff {diff:.2e}, min cosine {cos:.7f}"
        # docs/performance.md states the measured agreement; checked with a 10x margin,
        # independently of FEATURE_TOLERANCE (the refusal threshold).
        assert float(np.abs(reference[: len(batch)] - got).max()) <= DOCUMENTED_MAX_DIFF * 10
    assert np.abs(reference).max() > 1.0  # the tolerance is meaningful next to the features
    for beam in (1, 3):
        a = fast.generate(fast.encode(x), CaptionOptions(beam_size=beam))
        b = plain.generate(reference, CaptionOptions(beam_size=beam))
        fused = fast.generate(fast.encode_started(x), CaptionOptions(beam_size=beam))  # start from the encoder graph
        assert [r.tokens for r in a] == [r.tokens for r in b] == [r.tokens for r in fused]
        assert np.allclose([r.score for r in a], [r.score for r in b], atol=1e-4)
        assert np.allclose([r.score for r in a], [r.score for r in fused], atol=1e-5)
        assert len({r.caption for r in b}) > 1  # different images, different captions


def copy_of(lite0_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ckpt"
    shutil.copytree(lite0_dir, out)
    return out


def test_an_altered_or_truncated_graph_is_one_line_naming_the_file_and_the_fix(lite0_dir, tmp_path):
    ckpt = copy_of(lite0_dir, tmp_path)
    step = ckpt / GRAPHS / graphs_mod.STEP
    data = step.read_bytes()
    for damaged in (data[: len(data) // 2], data[:-1] + bytes([data[-1] ^ 1])):
        step.write_bytes(damaged)
        with pytest.raises(CheckpointError) as e:
            Captioner.load(ckpt)
        text = str(e.value)
        assert "\n" not in text and str(step) in text and "altered or truncated" in text
        assert f"captioner export {ckpt}" in text
    step.unlink()
    with pytest.raises(CheckpointError, match=r"step\.onnx: missing"):
        Captioner.load(ckpt)


def test_graphs_of_other_weights_are_stale(lite0_dir, tmp_path):
    ckpt = copy_of(lite0_dir, tmp_path)
    weights = ckpt / WEIGHTS
    weights.write_bytes(weights.read_bytes() + b" ")  # any change to the weights file
    with pytest.raises(CheckpointError, match=r"other weights .*\(stale\); run `captioner export"):
        graphs_mod.read_graphs(ckpt)
    manifest = ckpt / GRAPHS / graphs_mod.MANIFEST
    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid graph manifest"):
        graphs_mod.read_graphs(ckpt)


def test_no_graphs_without_torch_says_what_to_run(lite0_dir, tmp_path, monkeypatch):
    ckpt = copy_of(lite0_dir, tmp_path)
    shutil.rmtree(ckpt / GRAPHS)
    real = graphs_mod.importlib.util.find_spec
    monkeypatch.setattr(graphs_mod.importlib.util, "find_spec", lambda n: None if n == "torch" else real(n))
    with pytest.raises(CheckpointError) as e:
        Captioner.load(ckpt)
    assert str(e.value) == (
        f"{ckpt}: the checkpoint has no exported graphs; run `captioner export {ckpt}` where PyTorch is "
        "installed (pip install 'captioner[train]')"
    )


def test_with_torch_a_checkpoint_without_graphs_is_exported_once_into_the_cache(
    lite0_dir, tmp_path, monkeypatch, caplog
):
    ckpt = copy_of(lite0_dir, tmp_path)
    shutil.rmtree(ckpt / GRAPHS)
    calls = []
    real = export_mod.export_graphs
    monkeypatch.setattr(export_mod, "export_graphs", lambda *a: calls.append(a) or real(*a))
    with caplog.at_level(logging.INFO, logger="captioner.runtime"):
        first = Captioner.load(ckpt)
        second = Captioner.load(ckpt)
    assert len(calls) == 1 and str(first.graphs.folder).startswith(str(tmp_path / "cache"))
    assert second.graphs.folder == first.graphs.folder and not (ckpt / GRAPHS).exists()
    assert "exporting them into" in caplog.text


def test_export_refuses_a_graph_that_disagrees_and_keeps_the_old_ones(lite0_dir, tmp_path, monkeypatch):
    ckpt = copy_of(lite0_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in (ckpt / GRAPHS).iterdir()}
    monkeypatch.setattr(export_mod, "STEP_TOLERANCE", -1.0)  # nothing agrees with that
    with pytest.raises(CheckpointError, match="the exported decoder start disagrees with PyTorch"):
        export_mod.export_graphs(ckpt)
    assert {p.name: p.read_bytes() for p in (ckpt / GRAPHS).iterdir()} == before
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_the_manifest_records_digests_tools_and_checks(lite0_dir):
    manifest = json.loads((lite0_dir / GRAPHS / graphs_mod.MANIFEST).read_text())
    assert manifest["format"] == graphs_mod.GRAPHS_FORMAT and manifest["opset"] >= 17
    assert set(manifest["tools"]) == {"torch", "onnx", "onnxruntime"}
    assert set(manifest["files"]) >= {graphs_mod.ENCODER, graphs_mod.START, graphs_mod.STEP, graphs_mod.LABELS}
    assert manifest["sources"] == graphs_mod.source_digests(lite0_dir)
    assert manifest["decoder"]["check"]["step_max_abs"] <= export_mod.STEP_TOLERANCE
    start = manifest["encoder"]["start"]  # the encoder graph's fused start, checked at export
    assert start["outputs"] == ["features", "memory", "h", "c"][: 2 + manifest["decoder"]["state"]]
    assert start[graphs_mod.ENCODER]["start_max_abs"] <= export_mod.STEP_TOLERANCE
    # no calibration images: no int8 graph, and the manifest says why
    assert graphs_mod.ENCODER_INT8 not in manifest["files"] and "calibration" in manifest["int8"]["reason"]


def test_encoder_threads_follow_the_argument_then_the_environment(lite0_dir, monkeypatch):
    monkeypatch.setenv(graphs_mod.THREADS_ENV, "1")
    assert Captioner.load(lite0_dir).encoder.threads == 1
    assert Captioner.load(lite0_dir, threads=2).encoder.threads == 2
    monkeypatch.setenv(graphs_mod.THREADS_ENV, "many")
    assert graphs_mod.encoder_threads() >= 1


def test_int8_requested_without_an_int8_graph_runs_fp32_and_says_why(lite0_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="captioner.runtime"):
        model = Captioner.load(lite0_dir, precision="int8")
    assert model.precision == "fp32" and "calibration" in model.describe()["runtime"]["reasons"]["int8"]
    assert "the encoder runs in fp32, not int8" in caplog.text
    with pytest.raises(graphs_mod.PrecisionError, match="int8, fp32"):
        Captioner.load(lite0_dir, precision="fp16")
