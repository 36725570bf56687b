"""The decoder's start inside the encoder graphs: one encoder call gives features, memory, state.

Fused (``encode_started`` then ``generate`` on it) against unfused (``encode`` then
``generate`` on the features, which runs start.onnx): the same tokens and the same numbers
within 1e-5, on the shipped models (the pooled one's int8 encoder included) and on small
checkpoints of both decoder kinds; the PyTorch reference takes the same calls; graphs of the
previous format are refused in one line, or re-exported when they are only the cache's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from captioner import Captioner
from captioner.attention import AttentionConfig, AttentionDecoder
from captioner.checkpoint import GRAPHS
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.encoders import build_encoder
from captioner.errors import CheckpointError
from captioner.model import ReferenceCaptioner, fused
from captioner.model import export as export_mod
from captioner.model.onnx_encoder import export_onnx
from captioner.model.steps import StartGraph
from captioner.options import CaptionOptions
from captioner.runtime import graphs as graphs_mod
from captioner.runtime.started import Started
from captioner.training.scenes import generate_scenes
from captioner.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
OLD_FORMAT = "captioner-graphs/1"


@pytest.fixture(autouse=True)
def _hermetic_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """Eight held-out scenes and the test photos."""
    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, {"test": 8}, seed=31337, progress=False)
    return sorted((out / "images" / "test").glob("*.jpg")) + sorted((ROOT / "tests" / "data").glob("*.jpg"))


def _tiny(folder: Path, attention: bool) -> Path:
    torch.manual_seed(1)
    vocab = Vocabulary.build([" ".join(f"word{i}" for i in range(60))])
    encoder = build_encoder("efficientnet_lite0", spatial=attention)
    common = dict(vocab_size=len(vocab), feature_dim=encoder.feature_dim, embed_dim=16, hidden_dim=32, max_length=8)
    if attention:
        decoder: CaptionDecoder = AttentionDecoder(
            AttentionConfig(**common, img_proj_dim=16, attention_dim=16, annotation_dim=24, cell="lstm")
        )
    else:
        decoder = CaptionDecoder(DecoderConfig(**common, img_proj_dim=16, cell="gru"))
    out = ReferenceCaptioner(encoder, decoder, vocab).save(folder)
    export_mod.export_graphs(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Small checkpoints, exported: an attention LSTM and a pooled GRU decoder."""
    base = tmp_path_factory.mktemp("tiny")
    return {"attention": _tiny(base / "attention", True), "pooled": _tiny(base / "pooled", False)}


def assert_same(fused_results, plain_results) -> None:
    assert [r.tokens for r in fused_results] == [r.tokens for r in plain_results]
    for a, b in zip(fused_results, plain_results):
        assert abs(a.score - b.score) <= TOLERANCE
        assert np.abs(np.subtract(a.logprobs, b.logprobs)).max() <= TOLERANCE
        assert (a.attention is None) == (b.attention is None)
        if a.attention is not None:
            assert np.abs(a.attention - b.attention).max() <= TOLERANCE
        assert [c.tokens for c in a.candidates] == [c.tokens for c in b.candidates]


def fused_vs_plain(model, images: list[Path]) -> int:
    """Greedy, beam 3 and n-best 3 both ways; returns how many captions were compared."""
    x = np.stack([model.preprocess(str(p)) for p in images])  # (B, 3, S, S)
    started = model.encode_started(x)
    features = model.encode(x)
    assert isinstance(started, Started) and len(started) == len(images)
    assert np.abs(started.features - features).max() <= TOLERANCE
    compared = 0
    for options in (CaptionOptions(beam_size=1), CaptionOptions(beam_size=3, num_captions=3)):
        a = model.generate(started, options, attention=model.attends)
        b = model.generate(features, options, attention=model.attends)
        assert_same(a, b)
        compared += len(a)
    assert len({r.caption for r in a}) > 1  # different images, different captions
    return compared


@pytest.mark.parametrize("name", ["default", "pooled"])
def test_the_shipped_models_give_the_same_answers_fused_and_unfused(name, inputs):
    model = Captioner.load(ROOT / "weights" / name)
    if name == "pooled":  # its int8 encoder graph carries the start too
        assert model.precision == "int8"
    assert fused_vs_plain(model, inputs) == 2 * len(inputs)


@pytest.mark.parametrize("kind", ["attention", "pooled"])
def test_small_checkpoints_give_the_same_answers_fused_and_unfused(kind, tiny, inputs):
    model = Captioner.load(tiny[kind])
    assert model.attends == (kind == "attention")
    x = np.stack([model.preprocess(str(p)) for p in inputs[:4]])
    started = model.encode_started(x)
    memory, state = model.step.start(started.features)  # start.onnx on the same features
    assert np.abs(started.memory - memory).max() <= TOLERANCE
    assert len(started.state) == len(state) == (2 if kind == "attention" else 1)  # LSTM (h, c), GRU h
    for got, want in zip(started.state, state):
        assert got.shape == want.shape and np.abs(got - want).max() <= TOLERANCE
    fused_vs_plain(model, inputs[:6])
    # sampling draws the same words from the same generator either way
    a = model.generate(started, temperature=1.0, rng=np.random.default_rng(5))
    b = model.generate(started.features, temperature=1.0, rng=np.random.default_rng(5))
    assert_same(a, b)


def test_the_reference_takes_the_same_calls(tiny, inputs):
    reference = ReferenceCaptioner.load(tiny["attention"], device="cpu")
    runtime = Captioner.load(tiny["attention"])
    x = np.stack([runtime.preprocess(str(p)) for p in inputs[:3]])
    started = reference.encode_started(x)
    with torch.no_grad():
        memory, *state = StartGraph(reference.decoder)(torch.from_numpy(reference.encode(x)))
    assert torch.equal(started.memory, memory) and all(
        np.array_equal(s, t.numpy()) for s, t in zip(started.state, state)
    )
    assert_same(
        reference.generate(started, CaptionOptions(beam_size=3), attention=True),
        reference.generate(started.features, CaptionOptions(beam_size=3), attention=True),
    )
    # and the runtime's fused start is the reference's within the export's tolerance
    ours = runtime.encode_started(x)
    assert np.abs(ours.memory - memory.numpy()).max() <= export_mod.STEP_TOLERANCE
    assert [r.tokens for r in runtime.generate(ours)] == [r.tokens for r in reference.generate(started)]


def test_caption_and_an_empty_batch_use_the_fused_route(tiny, inputs, monkeypatch):
    model = Captioner.load(tiny["pooled"])
    empty = model.encode_started(np.zeros((0, 3, 224, 224), np.float32))
    assert len(empty) == 0 and model.generate(empty) == []
    plain = [r.caption for r in model.generate(model.encode(np.stack([model.preprocess(str(inputs[0]))])))]
    monkeypatch.setattr(model.step, "start", lambda features: pytest.fail("the start ran again"))
    assert model.caption([str(inputs[0])]) == plain


def test_the_manifest_names_the_fused_outputs_and_their_checks(tiny):
    for kind, state in (("attention", ["h", "c"]), ("pooled", ["h"])):
        manifest = json.loads((tiny[kind] / GRAPHS / graphs_mod.MANIFEST).read_text())
        assert manifest["format"] == graphs_mod.GRAPHS_FORMAT != OLD_FORMAT
        start = manifest["encoder"]["start"]
        assert start["outputs"] == ["features", "memory", *state]
        assert 0.0 <= start[graphs_mod.ENCODER]["start_max_abs"] <= export_mod.STEP_TOLERANCE
        outputs = graphs_mod.session(str(tiny[kind] / GRAPHS / graphs_mod.ENCODER)).get_outputs()
        assert [o.name for o in outputs] == start["outputs"]


def test_export_refuses_a_fused_start_that_disagrees(tiny):
    graphs = tiny["pooled"] / GRAPHS
    encoder, start = (graphs / graphs_mod.ENCODER).read_bytes(), (graphs / graphs_mod.START).read_bytes()
    other = CaptionDecoder(ReferenceCaptioner.load(tiny["pooled"], device="cpu").decoder.config)  # other weights
    x = np.zeros((1, 3, 224, 224), np.float32)
    with pytest.raises(CheckpointError, match=r"encoder\.onnx's decoder start disagrees with PyTorch"):
        fused.check_fused("encoder.onnx", encoder, x, StartGraph(other), export_mod.STEP_TOLERANCE)
    with pytest.raises(CheckpointError, match="different opsets"):
        fused.fuse_start(encoder, _other_opset(start))


def _other_opset(graph: bytes) -> bytes:
    model = onnx.load_from_string(graph)
    model.opset_import[0].version = 18
    return model.SerializeToString()


def _old_format(folder: Path) -> None:
    path = folder / graphs_mod.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format"] = OLD_FORMAT
    path.write_text(json.dumps(manifest))


def test_graphs_of_the_previous_format_are_refused_in_one_line(tiny, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny["pooled"], ckpt)
    _old_format(ckpt / GRAPHS)
    with pytest.raises(CheckpointError) as e:
        Captioner.load(ckpt)
    text = str(e.value)
    assert "\n" not in text and "(stale)" in text and OLD_FORMAT in text and graphs_mod.GRAPHS_FORMAT in text
    assert f"run `captioner export {ckpt}`" in text


def test_stale_graphs_in_the_cache_are_exported_again(tiny, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny["pooled"], ckpt)
    shutil.rmtree(ckpt / GRAPHS)
    first = Captioner.load(ckpt)  # exported into the cache
    _old_format(first.graphs.folder)
    again = Captioner.load(ckpt)
    assert again.graphs.folder == first.graphs.folder
    assert again.graphs.manifest["format"] == graphs_mod.GRAPHS_FORMAT


def test_an_encoder_graph_without_the_start_is_refused_in_one_line(tiny, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny["pooled"], ckpt)
    graphs = ckpt / GRAPHS
    model = ReferenceCaptioner.load(ckpt, device="cpu")
    (graphs / graphs_mod.ENCODER).write_bytes(export_onnx(model.encoder, 224))  # features only
    manifest = json.loads((graphs / graphs_mod.MANIFEST).read_text())
    manifest["files"][graphs_mod.ENCODER]["sha256"] = graphs_mod.file_digest(graphs / graphs_mod.ENCODER)
    (graphs / graphs_mod.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as e:
        Captioner.load(ckpt)
    assert "\n" not in str(e.value) and "not features, memory and the decoder's state" in str(e.value)
    assert f"captioner export {ckpt}" in str(e.value)
