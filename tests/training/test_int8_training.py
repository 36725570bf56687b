"""`captioner train --precision int8`: the decoder learns the features the int8 encoder serves."""

from __future__ import annotations

import json

import pytest
import torch
from captionkit import tiny_scenes

from captioner.training.config import SettingError, TrainConfig


def _settings(tmp_path, **kw) -> dict:
    return dict(
        data=str(tiny_scenes(tmp_path, seed=5)),
        cache_dir=str(tmp_path / "cache"),
        epochs=1,
        batch_size=16,
        embed_dim=16,
        img_proj_dim=16,
        hidden_dim=32,
        lr=5e-3,
        warmup_steps=2,
        progress=False,
        plot=False,
        device="cpu",
        threads=1,
        **kw,
    )


def test_int8_training_caches_int8_features_and_writes_a_checkpoint_served_int8(tmp_path, monkeypatch):
    from safetensors import safe_open

    from captioner import Captioner
    from captioner.checkpoint import CALIBRATION
    from captioner.model.quantize import read_calibration
    from captioner.training.train import train

    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path / "onnx-cache"))  # the int8 graphs' own cache
    monkeypatch.delenv("CAPTIONER_PRECISION", raising=False)
    settings = _settings(tmp_path)
    train(TrainConfig(**settings, out=str(tmp_path / "fp32")))
    train(TrainConfig(**settings, out=str(tmp_path / "int8"), precision="int8"))

    caches = {p.name: p for p in (tmp_path / "cache").glob("*.safetensors")}
    assert len(caches) == 2, caches  # one per precision, never mixed
    (int8_name,) = [n for n in caches if "-int8-" in n]
    (fp32_name,) = [n for n in caches if "-int8-" not in n]
    feats = {}
    for name, path in caches.items():
        with safe_open(str(path), framework="pt") as f:
            feats[name] = f.get_tensor("features").float()  # (N, 1280), same image order
            identity = json.loads(f.metadata()["identity"])
        assert ("-int8-" in identity["encoder"]) == (name == int8_name), identity
    a, b = feats[fp32_name], feats[int8_name]
    assert a.shape == b.shape and not torch.equal(a, b)  # really the quantised graph's features
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert float(cos.min()) > 0.9, cos  # and still the same images

    best = tmp_path / "int8" / "best"
    meta = json.loads((best / "metadata.json").read_text())
    assert meta["precision"] == "int8" and meta["train_config"]["precision"] == "int8"
    assert meta["calibration"]["images"] == 16 and 0.9 <= meta["calibration"]["mean_cosine"] <= 1.0
    images = read_calibration(best)
    assert (best / CALIBRATION).is_file() and images is not None and len(images) == 16  # every train image
    model = Captioner.load(best)  # the graphs, int8 encoder included, exported on this first load
    facts = model.describe()
    assert facts["precision_requested"] == "int8" and facts["precision"] == "int8", facts["runtime"]
    assert not (tmp_path / "fp32" / "best" / CALIBRATION).exists()
    assert json.loads((tmp_path / "fp32" / "best" / "metadata.json").read_text()).get("precision") is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"precision": "int4"}, "precision must be one of int8, fp32"),
        ({"precision": "int8", "fine_tune": "last"}, "cannot be combined with fine_tune"),
    ],
)
def test_int8_training_settings_are_checked(settings, message):
    with pytest.raises(SettingError, match=message):
        TrainConfig(data="d", out="o", **settings)
