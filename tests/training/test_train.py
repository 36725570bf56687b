"""The training loop on a tiny scenes dataset: it learns, it needs the image, it resumes
exactly, it skips unreadable images with a report, and its settings are checked."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest
import torch
from captioner.training.scenes import generate_scenes
from captioner.training.scenes.catalogue import CATEGORY_BY_NAME
from captioner.training.train import (
    TrainConfig,
    _flatten_optimizer,
    _unflatten_optimizer,
    lr_factor,
    resume_config,
    train,
)
from safetensors.torch import load_file

from captioner import Captioner
from captioner.errors import CaptionerError

KINDS = ("dog", "car", "apple", "cat")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-kind scenes dataset (96 train / 12 val / 24 test images) and a feature cache folder."""
    root = tmp_path_factory.mktemp("tiny")
    generate_scenes(
        root / "data",
        {"train": 96, "val": 12, "test": 24},
        seed=3,
        categories=[CATEGORY_BY_NAME[k] for k in KINDS],
        progress=False,
    )
    return root


def _cfg(tiny, out, **kw) -> TrainConfig:
    base = dict(
        data=str(tiny / "data"),
        out=str(out),
        cache_dir=str(tiny / "cache"),
        epochs=3,
        batch_size=32,
        embed_dim=32,
        img_proj_dim=32,
        hidden_dim=96,
        lr=5e-3,
        warmup_steps=4,
        progress=False,
        plot=False,
        device="cpu",
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _judge(rows, truth_file) -> dict[str, float]:
    from captioner.metrics.scene import SceneTruth, check_caption

    truth = SceneTruth.load(truth_file)
    n = len(rows)
    checks = [check_caption(r["caption"], truth.get(r["id"]), truth.words) for r in rows]
    return {
        "background": sum(
            not {"wrong_background", "missing_background", "several_backgrounds"} & set(c.reasons) for c in checks
        )
        / n,
        "kinds": sum(not {"missing_kind", "extra_kind"} & set(c.reasons) for c in checks) / n,
        "exact": sum(c.correct for c in checks) / n,
    }


def test_tiny_run_learns_and_needs_the_image(tiny, tmp_path):
    torch.set_num_threads(1)
    real = train(_cfg(tiny, tmp_path / "real", epochs=12, dropout=0.0, plot=True, patience=0))
    blind = train(_cfg(tiny, tmp_path / "blind", epochs=12, dropout=0.0, zero_features=True, patience=0))
    r, b = real.test_metrics, blind.test_metrics
    truth = tiny / "data" / "scenes_test.json"
    ra = _judge([json.loads(x) for x in (tmp_path / "real" / "test_captions.jsonl").read_text().splitlines()], truth)
    ba = _judge([json.loads(x) for x in (tmp_path / "blind" / "test_captions.jsonl").read_text().splitlines()], truth)
    # Chance names the right background 1 time in 10. A decoder fed zero features can only
    # repeat its most likely captions; the one that sees the image reads the colour and
    # the objects off it (96 training images, 12 short epochs: far from converged).
    assert ra["background"] >= 0.5 and ba["background"] <= 0.35, (ra, ba)
    assert ra["kinds"] > ba["kinds"], (ra, ba)
    assert r["bleu_4"] > b["bleu_4"] + 0.1 and r["cider_d"] > 2 * b["cider_d"], (r, b)
    assert real.history[-1]["train_loss"] < real.history[0]["train_loss"] * 0.5

    out = tmp_path / "real"
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, 13))
    assert {"train_loss", "val_loss", "bleu_4", "cider_d", "scene_accuracy", "lr"} <= set(rows[0])
    assert (out / "log.csv").read_text().startswith("epoch,")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "best" / "metadata.json").read_text())
    assert meta["test"]["scene_accuracy"] == r["scene_accuracy"]
    assert meta["dataset"]["splits"] == {"train": 96, "val": 12, "test": 24}
    assert meta["dataset"]["generator"]["seed"] == 3
    # the best checkpoint is a normal checkpoint: the vocabulary came from train captions
    model = Captioner.load(out / "best", device="cpu")
    assert set(model.vocab.itos[4:]) >= set(KINDS) | {"background"}
    image = sorted((tiny / "data" / "images" / "test").iterdir())[0]
    caption = model.caption([str(image)])[0]
    assert caption and all(w in model.vocab.stoi for w in caption.split())


def test_resume_after_interruption_gives_the_same_weights(tiny, tmp_path):
    torch.set_num_threads(1)
    cfg = dict(epochs=3, dropout=0.2, label_smoothing=0.05, evaluate_test=False)
    full = train(_cfg(tiny, tmp_path / "full", **cfg))

    class Interrupted(Exception):
        pass

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(_cfg(tiny, tmp_path / "cut", **cfg), on_epoch_end=stop_after_first)
    assert json.loads((tmp_path / "cut" / "last" / "trainer_state.json").read_text())["trainer"]["epoch"] == 1
    with pytest.raises(CaptionerError, match="--resume"):  # never overwrite a run by accident
        train(_cfg(tiny, tmp_path / "cut", **cfg))
    with pytest.raises(CaptionerError, match="lr"):  # resuming must not change what is learned
        train(_cfg(tiny, tmp_path / "cut", **dict(cfg, lr=1e-3)), resume=True)
    resumed = train(resume_config(tmp_path / "cut"), resume=True)

    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for x, y in zip(full.history, resumed.history):
        assert math.isclose(x["train_loss"], y["train_loss"], rel_tol=1e-6)
        assert math.isclose(x["val_loss"], y["val_loss"], rel_tol=1e-6)
    lines = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]  # no duplicated epoch rows


def test_corrupt_training_image_is_skipped_with_a_report(tmp_path, capsys):
    torch.set_num_threads(1)
    data = tmp_path / "data"
    generate_scenes(
        data,
        {"train": 10, "val": 3, "test": 0},
        seed=5,
        categories=[CATEGORY_BY_NAME[k] for k in KINDS],
        progress=False,
    )
    bad = sorted((data / "images" / "train").iterdir())[2]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    result = train(
        TrainConfig(
            data=str(data),
            out=str(tmp_path / "run"),
            cache_dir=str(tmp_path / "cache"),
            epochs=1,
            batch_size=8,
            hidden_dim=32,
            embed_dim=16,
            img_proj_dim=16,
            warmup_steps=1,
            progress=False,
            plot=False,
            device="cpu",
        )
    )
    assert [p for p, _ in result.skipped_images] == [str(bad.resolve())]
    err = capsys.readouterr().err
    assert bad.name in err and "skipped 1 unreadable image" in err
    assert json.loads((tmp_path / "run" / "skipped_images.json").read_text())[0][0] == str(bad.resolve())
    meta = json.loads((tmp_path / "run" / "best" / "metadata.json").read_text())
    assert meta["epoch"] == 1  # the run went on and produced a checkpoint


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, 110, cfg) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(f[:10]))
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)
    const = TrainConfig(warmup_steps=0, schedule="constant")
    assert {lr_factor(s, 50, const) for s in range(50)} == {1.0}


def test_optimizer_state_round_trips_without_pickle():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    tensors, meta = _flatten_optimizer(opt)
    json.dumps(meta)  # everything that is not a tensor is plain JSON
    opt2 = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=0.1)
    opt2.load_state_dict(_unflatten_optimizer(tensors, json.loads(json.dumps(meta))))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(v, s2["state"][pid][k])
    assert s1["param_groups"][0]["betas"] == s2["param_groups"][0]["betas"]


def test_settings_are_validated():
    with pytest.raises(CaptionerError, match="cell"):
        TrainConfig(cell="transformer")
    with pytest.raises(CaptionerError, match="unknown training setting"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(CaptionerError, match="dropout"):
        TrainConfig(dropout=1.5)
    with pytest.raises(CaptionerError, match="no dataset"):
        train(TrainConfig(data="", out="/nonexistent/never", device="cpu", progress=False))


def test_cli_config_file_and_flags(tmp_path, capsys):
    import argparse

    from captioner.training.cli_train import cmd_train, register

    parser = argparse.ArgumentParser(prog="captioner")
    register(parser.add_subparsers(dest="verb"))
    (tmp_path / "run.json").write_text(json.dumps({"data": "somewhere", "epochs": 7, "cell": "gru"}))
    args = parser.parse_args(
        ["train", "--config", str(tmp_path / "run.json"), "--epochs", "9", "--no-amp", "--print-config"]
    )
    assert cmd_train(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["data"], printed["epochs"], printed["cell"], printed["amp"]) == ("somewhere", 9, "gru", False)
    args = parser.parse_args(["train", "--out", str(tmp_path / "none"), "--resume"])
    with pytest.raises(CaptionerError, match="no resumable state"):
        cmd_train(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--cell", "transformer"])
    shutil.rmtree(tmp_path / "none", ignore_errors=True)


def test_fine_tuning_trains_only_the_last_blocks_and_ships_them(tmp_path):
    from captioner.encoders import build_encoder

    torch.set_num_threads(1)
    data = tmp_path / "data"
    generate_scenes(
        data,
        {"train": 4, "val": 2, "test": 0},
        seed=4,
        categories=[CATEGORY_BY_NAME[k] for k in ("dog", "car")],
        progress=False,
    )
    result = train(
        TrainConfig(
            data=str(data),
            out=str(tmp_path / "ft"),
            fine_tune="last",
            fine_tune_blocks=1,
            encoder_lr=1e-2,
            epochs=1,
            batch_size=10,
            hidden_dim=32,
            embed_dim=16,
            img_proj_dim=16,
            warmup_steps=1,
            progress=False,
            plot=False,
            device="cpu",
        )
    )
    tuned = load_file(str(result.best_path / "encoder.safetensors"))
    start = build_encoder("efficientnet_lite0").state_dict()
    changed = {k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, tuned[k].float())}
    assert changed and all(k.startswith("trunk.head.") for k in changed), sorted(changed)[:5]
    model = Captioner.load(result.best_path, device="cpu")  # the fine-tuned CNN travels with the checkpoint
    assert torch.equal(model.encoder.state_dict()["trunk.head.conv.weight"], tuned["trunk.head.conv.weight"])
