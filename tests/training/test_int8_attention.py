"""An attention decoder trained on int8 feature maps exports its int8 encoder and serves it.

The int8 graph of Lite0's 7x7x1280 map is too far from fp32 for a decoder that learned
fp32 maps (quantize.INT8_TOLERANCE), but a decoder trained on the int8 maps is judged
by its held-out accuracy; at training and at export only a floor against broken
quantisation applies (quantize.INT8_TRAINED_TOLERANCE).
"""

from __future__ import annotations

import json

from captionkit import tiny_scenes

from captioner.model import quantize
from captioner.training.config import TrainConfig


def test_an_int8_trained_attention_checkpoint_exports_int8_and_serves_it_by_default(tmp_path, monkeypatch):
    from captioner import Captioner
    from captioner.model.export import export_graphs
    from captioner.runtime import graphs
    from captioner.training.train import train

    monkeypatch.delenv(graphs.PRECISION_ENV, raising=False)
    out = tmp_path / "run"
    train(
        TrainConfig(
            data=str(tiny_scenes(tmp_path, seed=6)),
            out=str(out),
            cache_dir=str(tmp_path / "cache"),
            decoder="attention",
            attention_dim=16,
            annotation_dim=16,
            init_state=False,
            attention_sentinel=True,
            batch_by_image=True,
            embed_dim=16,
            img_proj_dim=16,
            hidden_dim=32,
            epochs=1,
            batch_size=16,
            warmup_steps=2,
            progress=False,
            plot=False,
            device="cpu",
            threads=1,
            precision="int8",
        )
    )
    best = out / "best"
    meta = json.loads((best / "metadata.json").read_text())
    calib = meta["calibration"]
    assert meta["precision"] == "int8" and quantize.trained_on_int8(meta)
    assert calib["images"] == 16 and 0.70 <= calib["min_cosine"] <= calib["mean_cosine"] <= 1.0, calib

    folder = export_graphs(best)
    manifest = json.loads((folder / graphs.MANIFEST).read_text())
    check = manifest["int8"]["check"]
    assert manifest["int8"]["reason"] == "" and graphs.ENCODER_INT8 in manifest["files"], manifest["int8"]
    assert check["allowed"] == {"mean_cosine": 0.90, "min_cosine": 0.70}  # the floor, not fp32 closeness
    assert abs(check["min_cosine"] - calib["min_cosine"]) < 0.02  # the same graph training ran

    model = Captioner.load(best)
    facts = model.describe()
    assert model.attends and model.precision == "int8" and facts["precision_requested"] == "int8", facts
    assert Captioner.load(best, precision="fp32").precision == "fp32"  # fp32 still on request


def test_the_int8_gate_is_the_floor_only_for_checkpoints_trained_on_int8_features():
    trained = {"precision": "int8", "train_config": {"precision": "int8"}}
    served_only = {"precision": "int8", "train_config": {"precision": "fp32"}}  # fp32-trained, int8 asked for
    assert quantize.int8_tolerance(trained) is quantize.INT8_TRAINED_TOLERANCE
    assert quantize.int8_tolerance(served_only) is quantize.INT8_TOLERANCE
    assert quantize.int8_tolerance(None) is quantize.INT8_TOLERANCE
    floor, strict = quantize.INT8_TRAINED_TOLERANCE, quantize.INT8_TOLERANCE
    assert floor.min_mean_cosine < strict.min_mean_cosine and floor.min_cosine < strict.min_cosine
