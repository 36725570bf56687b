"""The finer map (`--encoder efficientnet_lite0_d16`): Lite0 at output stride 16, 14 x 14 cells.

The same ImageNet weights with the stride-32 stage run at stride 1 and dilated after it: the
pooled features stay the default encoder's (so labels and the out-of-domain statistics mean
the same), the map has four times the cells, and a checkpoint on it exports, serves torch-free
and explains with 14 x 14 maps like the PyTorch reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner import Captioner
from captioner.attention import AttentionConfig, AttentionDecoder
from captioner.encoders import build_classifier, build_encoder, get_spec
from captioner.explain import explain
from captioner.model import ReferenceCaptioner
from captioner.model import export as export_mod
from captioner.model.onnx_encoder import FEATURE_TOLERANCE
from captioner.options import CaptionOptions
from captioner.vocab import Vocabulary

DATA = Path(__file__).resolve().parents[1] / "data"
FINER = "efficientnet_lite0_d16"


@pytest.fixture(autouse=True)
def _hermetic_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    images = [Image.open(DATA / name).convert("RGB") for name in ("chelsea.jpg", "coffee.jpg")]
    return torch.from_numpy(get_spec(FINER).preprocess.batch(images))  # (2, 3, 224, 224)


def test_the_finer_map_has_four_times_the_cells_and_the_same_pooled_features(photos):
    spec = get_spec(FINER)
    assert spec.grid == (14, 14) and spec.stride == 16 and spec.feature_dim == 1280 and spec.facts()["labels"]
    coarse, finer = build_encoder("efficientnet_lite0", spatial=True), build_encoder(FINER, spatial=True)
    with torch.no_grad():
        a, b = coarse(photos), finer(photos)  # (2, 49, 1280), (2, 196, 1280)
    assert a.shape == (2, 49, 1280) and b.shape == (2, 196, 1280)
    cos = torch.nn.functional.cosine_similarity(a.mean(1), b.mean(1), dim=1)  # (2,)
    assert (cos > 0.98).all(), cos  # the same features, seen at twice the resolution
    assert not torch.allclose(b.reshape(2, 7, 2, 7, 2, 1280)[:, :, 0], b.reshape(2, 7, 2, 7, 2, 1280)[:, :, 1])
    # its classifier still sees the cat and the coffee (the labels the runtime shows)
    with torch.no_grad():
        top = build_classifier(FINER, weights="pretrained")(photos).topk(5, dim=-1).indices.tolist()
    assert set(top[0]) & {281, 282, 283, 284, 285} and set(top[1]) & {967, 968}, top


@pytest.fixture(scope="module")
def finer_checkpoint(tmp_path_factory) -> Path:
    """A small random attention decoder on the finer map, exported."""
    torch.manual_seed(2)
    vocab = Vocabulary.build([" ".join(f"word{i}" for i in range(60))])
    encoder = build_encoder(FINER, spatial=True)
    decoder = AttentionDecoder(
        AttentionConfig(
            vocab_size=len(vocab), feature_dim=1280, embed_dim=16, hidden_dim=32, img_proj_dim=16, max_length=8,
            attention_dim=16, annotation_dim=24, cell="lstm",
        )
    )  # fmt: skip
    out = ReferenceCaptioner(encoder, decoder, vocab).save(tmp_path_factory.mktemp("finer") / "ckpt")
    export_mod.export_graphs(out)
    return out


def test_a_finer_map_checkpoint_serves_and_explains_like_its_reference(finer_checkpoint):
    runtime = Captioner.load(finer_checkpoint)
    reference = ReferenceCaptioner.load(finer_checkpoint, device="cpu")
    images = [str(DATA / "chelsea.jpg"), str(DATA / "coffee.jpg")]
    x = np.stack([runtime.preprocess(p) for p in images])  # (2, 3, 224, 224)
    features = runtime.encode(x)
    assert features.shape == (2, 196, 1280)
    assert np.abs(features - reference.encode(x)).max() <= FEATURE_TOLERANCE.max_abs
    for options in (CaptionOptions(beam_size=1), CaptionOptions(beam_size=3)):
        got = runtime.generate(runtime.encode_started(x), options)
        want = reference.generate(reference.encode_started(x), options)
        assert [r.tokens for r in got] == [r.tokens for r in want]
    for ours, theirs in zip(explain(runtime, images), explain(reference, images)):
        assert ours.words == theirs.words and len(ours.maps) == len(ours.words)
        for m, n in zip(ours.maps, theirs.maps):
            assert m.shape == (14, 14) and abs(float(m.sum()) - 1) < 1e-4
            assert np.abs(m - n).max() < 1e-4
    labels = runtime.caption_detailed([images[0]], labels=3)[0].labels
    assert labels and any("cat" in label.name for label in labels), labels
