"""The shipped default is the attention model (weights/default): it explains what it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from captioner import Captioner
from captioner.explain import explain
from captioner.metrics.scene import SceneTruth, check_caption
from captioner.training.scenes import generate_scenes

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "weights" / "default"


@pytest.fixture(scope="module")
def model() -> Captioner:
    return Captioner.load(FOLDER, device="cpu")


def test_it_is_an_attention_model_with_its_trust_statistics(model: Captioner):
    assert model.describe()["decoder"]["kind"] == "attention"
    assert model.trust.calibration is not None and model.trust.domain is not None


def test_it_captions_held_out_scenes_and_explains_them(model: Captioner, tmp_path: Path):
    generate_scenes(tmp_path, {"test": 24}, seed=20261202, progress=False)
    truth = SceneTruth.load(tmp_path, "test")
    files = sorted((tmp_path / "images" / "test").glob("*.jpg"))
    explained = explain(model, [str(f) for f in files])
    right = 0
    for f, e in zip(files, explained):
        image = truth.get(f"test/{f.name}")
        assert image is not None
        right += check_caption(e.caption, image, truth.words).correct
        assert e.words[-1] == "<end>" and len(e.words) == len(e.caption.split()) + 1
        assert e.maps.shape == (len(e.words), 7, 7)  # one 7x7 map per word (Lite0 at 224)
        assert np.allclose(e.maps.sum(axis=(1, 2)), 1.0, atol=1e-4) and (e.maps >= 0).all()
    # 97.3 % of 1,000 held-out scenes are exactly right (docs/training.md); a bound well under
    assert right >= 0.8 * len(files), right
