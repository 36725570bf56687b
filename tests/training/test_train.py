"""The training loop on tiny scenes datasets: it learns, it needs the image, it resumes
exactly (and really resumes), it stops early, it picks the best epoch by the metric asked
for, it holds out a validation split when there is none, it saves fp16, it fine-tunes the
CNN, it skips unreadable images with a report, and its settings are checked.

Every run is a tiny model on a few dozen images with one torch thread."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captioner import Captioner, ReferenceCaptioner
from captioner.checkpoint import ENCODER_WEIGHTS, METADATA, WEIGHTS
from captioner.errors import CaptionerError
from captioner.training import runlog
from captioner.training.plot import history_figure
from captioner.training.scenes import generate_scenes
from captioner.training.scenes.catalogue import CATEGORY_BY_NAME
from captioner.training.train import (
    TrainConfig,
    auto_threads,
    flatten_optimizer,
    load_splits,
    lr_factor,
    resume_config,
    train,
    unflatten_optimizer,
)

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
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """8 train / 6 val / 4 test images of 4 kinds, and 12 train / 4 test with no val split."""
    root = tmp_path_factory.mktemp("small")
    kinds = [CATEGORY_BY_NAME[k] for k in KINDS]
    generate_scenes(root / "data", {"train": 8, "val": 6, "test": 4}, seed=3, categories=kinds, progress=False)
    generate_scenes(root / "noval", {"train": 12, "test": 4}, seed=1, categories=kinds, progress=False)
    return root


def _small_cfg(small, out, **kw) -> TrainConfig:
    base = dict(
        data=str(small / "data"),
        cache_dir=str(small / "cache"),
        embed_dim=32,
        img_proj_dim=32,
        hidden_dim=64,
        batch_size=16,
        dropout=0.0,
        lr=1e-2,
        warmup_steps=1,
        schedule="constant",
    )
    base.update(kw)
    return _cfg(small, out, **base)


def _judge(rows, truth_file) -> dict[str, float]:
    from captioner.metrics.scene import SceneTruth, check_caption

    truth = SceneTruth.load(truth_file)
    n = len(rows)
    images = [truth.get(r["id"]) for r in rows]
    assert all(image is not None for image in images)
    checks = [check_caption(r["caption"], image, truth.words) for r, image in zip(rows, images) if image is not None]
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
    model = Captioner.load(out / "best")
    assert model.model_id == "real"  # the run's name, not "best-<hash>"
    # training's last step: the confidence calibration (on the 12 val captions) and domain statistics
    assert model.trust.calibration is not None and model.trust.calibration.captions == 12
    assert model.trust.domain is not None and model.trust.domain.images == 96
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
    saved = json.loads((tmp_path / "cut" / "last" / "trainer_state.json").read_text())
    executed: list[int] = []
    resumed = train(
        resume_config(tmp_path / "cut"), resume=True, on_epoch_end=lambda row: executed.append(row["epoch"])
    )

    # It resumed rather than restarted: only epochs 2 and 3 ran, with only their steps, and
    # epoch 1 is the interrupted run's own row (its timings too), not a recomputation.
    steps_per_epoch = full.history[0]["step"]
    assert executed == [2, 3]
    assert resumed.steps_run == full.history[-1]["step"] - steps_per_epoch
    assert resumed.history[0] == saved["history"][0]
    assert resumed.history[0]["epoch_seconds"] != full.history[0]["epoch_seconds"]
    # ... and it continued the optimizer where it stopped: the same weights as the full run
    # (a fresh AdamW at epoch 2 would not give them).
    a = load_file(str(tmp_path / "full" / "last" / WEIGHTS))
    b = load_file(str(tmp_path / "cut" / "last" / WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    sa = load_file(str(tmp_path / "full" / "last" / "trainer_state.safetensors"))
    sb = load_file(str(tmp_path / "cut" / "last" / "trainer_state.safetensors"))
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k
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
            threads=1,
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
    tensors, meta = flatten_optimizer(opt)
    json.dumps(meta)  # everything that is not a tensor is plain JSON
    opt2 = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=0.1)
    opt2.load_state_dict(unflatten_optimizer(tensors, json.loads(json.dumps(meta))))
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
    # a setting out of range: one line naming the range, exit status 2, nothing trained
    capsys.readouterr()
    assert cmd_train(parser.parse_args(["train", "--data", "somewhere", "--epochs", "0"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epochs must be >= 1" in err
    shutil.rmtree(tmp_path / "none", ignore_errors=True)


def _fine_tune(tmp_path, **settings):
    """A one-epoch fine-tuning run on 4 scenes; returns (result, tuned CNN weights, the names
    of the CNN's float tensors that changed from the pretrained start)."""
    from captioner.encoders import build_encoder

    torch.set_num_threads(1)
    data = tmp_path / "data"
    kinds = [CATEGORY_BY_NAME[k] for k in ("dog", "car")]
    generate_scenes(data, {"train": 4, "val": 2, "test": 0}, seed=4, categories=kinds, progress=False)
    result = train(
        TrainConfig(
            data=str(data),
            out=str(tmp_path / "ft"),
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
            threads=1,
            **settings,
        )
    )
    tuned = load_file(str(result.best_path / ENCODER_WEIGHTS))
    start = build_encoder("efficientnet_lite0").state_dict()
    changed = {k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, tuned[k].float())}
    return result, tuned, changed, start


def test_fine_tuning_trains_only_the_last_blocks_and_ships_them(tmp_path):
    result, tuned, changed, _ = _fine_tune(tmp_path, fine_tune="last", fine_tune_blocks=1)
    assert changed and all(k.startswith("trunk.head.") for k in changed), sorted(changed)[:5]
    model = ReferenceCaptioner.load(result.best_path, device="cpu")  # the fine-tuned CNN travels with the checkpoint
    assert torch.equal(model.encoder.state_dict()["trunk.head.conv.weight"], tuned["trunk.head.conv.weight"])
    # and the torch-free runtime's encoder graph is exported from that CNN, not the pretrained one
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, model.input_size, model.input_size)).astype(np.float32)
    from captioner.encoders import build_encoder

    runtime = Captioner.load(result.best_path)
    pretrained = build_encoder("efficientnet_lite0").eval()
    with torch.no_grad():
        before = pretrained(torch.from_numpy(x)).numpy()  # (2, 1280)
    np.testing.assert_allclose(runtime.encode(x), model.encode(x), atol=1e-4)
    assert np.abs(runtime.encode(x) - before).max() > 1e-3


def test_fine_tune_all_trains_the_whole_cnn_but_not_its_batch_norm_statistics(tmp_path):
    _, _, changed, start = _fine_tune(tmp_path, fine_tune="all")
    assert {"trunk.stem.conv.weight", "trunk.head.conv.weight"} <= changed  # first and last layers
    assert not {k for k in changed if "running_" in k}  # batch-norm statistics stay frozen
    assert len(changed) > len(start) // 3


def test_early_stopping_and_the_best_epoch_by_val_loss(small, tmp_path, capsys):
    out = tmp_path / "es"
    result = train(_small_cfg(small, out, epochs=40, metric="val_loss", patience=2, evaluate_test=False))
    vals = [row["val_loss"] for row in result.history]
    # it stopped `patience` epochs after the best one, long before the 40 allowed
    assert len(vals) == result.best_epoch + 2 < 40, vals
    assert json.loads((out / "results.json").read_text())["stopped_early"] is True
    assert "early stop: no better val_loss for 2 epochs" in capsys.readouterr().err
    # the best epoch is the lowest validation loss, and OUT/best holds that epoch, not the last
    assert result.best_epoch == 1 + vals.index(min(vals))
    assert all(v > min(vals) for v in vals[result.best_epoch :])
    meta = json.loads((out / "best" / METADATA).read_text())
    assert (meta["epoch"], meta["selected_by"], meta["val"]["val_loss"]) == (result.best_epoch, "val_loss", min(vals))
    best, last = load_file(str(out / "best" / WEIGHTS)), load_file(str(out / "last" / WEIGHTS))
    assert any(not torch.equal(best[k], last[k]) for k in best)
    assert [row["epoch"] for row in result.history if row["best"]][-1] == result.best_epoch


def test_best_by_bleu_fp16_weights_and_a_held_out_val_split(small, tmp_path, capsys):
    out = tmp_path / "fp16"
    cfg = _small_cfg(
        small, out, data=str(small / "noval"), epochs=5, metric="bleu_4", save_fp16=True, val_fraction=0.25
    )
    result = train(cfg)
    assert "holding out 3 train images for validation" in capsys.readouterr().err
    meta = json.loads((out / "best" / METADATA).read_text())
    assert meta["dataset"]["splits"] == {"train": 9, "val": 3, "test": 4}
    # best epoch: the highest BLEU-4, ties broken by the lower validation loss
    scores = [(row["bleu_4"], -row["val_loss"]) for row in result.history]
    assert result.best_epoch == 1 + scores.index(max(scores)) and meta["selected_by"] == "bleu_4"
    # --save-fp16: OUT/best is half precision (OUT/last, which resumes, is not), and the test
    # split was scored with those fp16 weights, as a user loads them
    best, last = load_file(str(out / "best" / WEIGHTS)), load_file(str(out / "last" / WEIGHTS))
    assert {v.dtype for v in best.values() if v.is_floating_point()} == {torch.float16}
    assert {v.dtype for v in last.values() if v.is_floating_point()} == {torch.float32}
    model = Captioner.load(out / "best")  # what a user runs: the graphs exported from the fp16 weights
    rows = [json.loads(x) for x in (out / "test_captions.jsonl").read_text().splitlines()]
    assert model.caption([r["file"] for r in rows]) == [r["caption"] for r in rows]

    # the held-out images are a deterministic part of train, disjoint from what trains
    splits, _ = load_splits(cfg, lambda msg: None)
    again, _ = load_splits(cfg, lambda msg: None)
    other, _ = load_splits(TrainConfig(**dict(cfg.to_dict(), seed=5)), lambda msg: None)
    train_paths, val_paths = set(splits["train"].paths), set(splits["val"].paths)
    assert len(val_paths) == 3 and not train_paths & val_paths and len(train_paths | val_paths) == 12
    assert again["val"].paths == splits["val"].paths and other["val"].paths != splits["val"].paths
    with pytest.raises(CaptionerError, match="no val split"):
        load_splits(TrainConfig(**dict(cfg.to_dict(), val_fraction=0.0)), lambda msg: None)


def test_cli_run_prints_the_test_metrics_once_and_a_hint_when_it_learned_little(small, tmp_path, capsys):
    import argparse

    from captioner.training.cli_train import cmd_train, register

    parser = argparse.ArgumentParser(prog="captioner")
    register(parser.add_subparsers(dest="verb"))
    run = tmp_path / "first-run"
    flags = ["--data", str(small / "data"), "--out", str(run), "--cache-dir", str(small / "cache"), "--epochs", "1"]
    flags += ["--hidden-dim", "32", "--embed-dim", "16", "--img-proj-dim", "16", "--threads", "1", "--no-progress"]
    assert cmd_train(parser.parse_args(["train", *flags, "--no-plot", "--device", "cpu"])) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert printed.count("test (best checkpoint, epoch 1)") == 1 and "scene_accuracy" in captured.out
    # one epoch on 8 images learns next to nothing: say so, with the recipe that works
    assert "learned little" in captured.err and runlog.QUICK_RECIPE in captured.err
    assert Captioner.load(run / "best").model_id == "first-run"


def test_weak_result_hint_only_when_the_result_is_far_below_sensible():
    assert runlog.weak_result_hint({"scene_accuracy": 0.0, "cider_d": 0.4}, 200, 2) is not None
    assert runlog.weak_result_hint({"scene_accuracy": 0.3, "cider_d": 3.0}, 1000, 8) is None
    assert runlog.weak_result_hint({"cider_d": 0.02}, 500, 3) is not None  # not a scenes dataset
    assert runlog.weak_result_hint({"cider_d": 0.9}, 500, 3) is None
    assert runlog.weak_result_hint({}, 500, 3) is None


def test_auto_threads_uses_every_core_whatever_the_load(monkeypatch):
    import captioner.training.config as config

    monkeypatch.setattr(config, "_TORCH_DEFAULT_THREADS", 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(config.os, "getloadavg", lambda: (3.2, 1.0, 1.0))
    assert auto_threads() == 2  # a busy 2-core machine still gets both cores
    monkeypatch.setattr(config, "_TORCH_DEFAULT_THREADS", 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_threads() == 4  # torchrun: the cores shared by the node's processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert auto_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "x")
    assert auto_threads() == 16


def test_curves_of_a_short_run_have_whole_epoch_ticks_and_plain_axes():
    rows = [
        {"epoch": 1, "lr": 2e-3, "train_loss": 4.1, "val_loss": 3.2, "bleu_4": 0.0, "cider_d": 0.0, "best": True},
        {"epoch": 2, "lr": 2e-3, "train_loss": 2.8, "val_loss": 2.2, "bleu_4": 0.3, "cider_d": 0.6, "best": True},
    ]
    fig = history_figure(rows, "scene_accuracy")
    fig.canvas.draw()
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
        low, high = ax.get_ylim()
        assert low == 0 and high > 0
        assert "e-1" not in ax.yaxis.get_offset_text().get_text()  # no 1e-13 offset on a flat curve
    lr_axis = fig.axes[2]
    assert lr_axis.get_ylim()[1] >= 2e-3


def test_batch_by_image_keeps_an_images_captions_together_and_splits_like_the_sampler():
    from types import SimpleNamespace

    from captioner.training.trainer import Trainer

    image = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # (P,): pairs of 5 images
    orders = []
    for rank in (0, 1):
        stub = SimpleNamespace(
            pairs={"train": SimpleNamespace(image=image)},
            ctx=SimpleNamespace(world_size=2, rank=rank),
            cfg=SimpleNamespace(seed=3),
        )
        orders.append(Trainer._by_image(stub, 1))
    assert len(orders[0]) == len(orders[1]) == 6
    whole = torch.stack(orders, dim=1).flatten()  # the global order the ranks interleave
    assert sorted(whole.tolist()) == list(range(12))
    seq = image[whole].tolist()
    assert all(seq.index(i) + seq.count(i) - 1 == len(seq) - 1 - seq[::-1].index(i) for i in set(seq))  # contiguous
    stub.ctx = SimpleNamespace(world_size=1, rank=0)
    assert Trainer._by_image(stub, 1).tolist() == whole.tolist()  # one process sees the same order
    assert Trainer._by_image(stub, 2).tolist() != whole.tolist()  # reshuffled every epoch
