"""Crash safety: ``kill -9`` of training and of folder captioning, then finish the job.

Training: one run of a tiny model on a tiny scenes dataset is killed twice (at a random
moment of start-up or feature caching, and at a random moment mid-training, which often
falls inside a checkpoint save); after every kill each checkpoint on disk must load, and the
next ``--resume`` (or a fresh start when no ``last`` exists yet) continues. The last
resume must finish with exactly one log row per epoch and with the weights an
uninterrupted run of the same settings ends with. Many more trials at random moments:
``python bench/crash_trials.py`` (figures in docs/reliability.md).

The kill moments come from a seeded generator (``CRASH_SEED``, default below), so a failure
is reproducible: the message names the seed, and ``CRASH_SEED=N pytest ...`` replays it or
explores other moments. The ``timeout=`` values are hang guards, not performance limits:
generous (minutes for runs that take seconds) so a slow, shared machine never fails them.

Folder captioning: killed at a random point, with a torn last line added (what a power
cut can leave); the rerun must finish with every image exactly once and no partial line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import crashkit as ck
import pytest
from hostile import encode, picture
from relkit import plant

EPOCHS = 8
SEED = int(os.environ.get("CRASH_SEED", "1201"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("crash-scenes")
    return ck.make_scenes(base / "data"), base / "cache"


@pytest.fixture(scope="module")
def killed_and_resumed(scenes, tmp_path_factory):
    """One training run killed twice and resumed to the end: (run folder, events)."""
    data, cache = scenes
    out = tmp_path_factory.mktemp("crash-train") / "run"
    seed = SEED
    rng = random.Random(seed)
    plan = [(0, rng.uniform(0.5, 3.0)), (2, rng.uniform(0.0, 0.5))]
    events: list[dict] = []
    for after_epochs, extra_s in plan:
        resume = (out / "last").exists()
        start_rows = len(ck.log_rows(out))
        proc = ck.start(ck.train_command(data, out, cache, EPOCHS, resume=resume), out.parent / "train.log")
        outcome = ck.kill_when(proc, lambda out=out, n=start_rows + after_epochs: len(ck.log_rows(out)) >= n, extra_s)
        where = f"(seed {seed}, kill {len(events) + 1} at +{extra_s:.2f} s after {after_epochs} epochs)"
        assert outcome == "killed" or proc.returncode == 0, (
            f"training failed {where}:\n" + (out.parent / "train.log").read_text(errors="replace")[-3000:]
        )
        try:
            loaded = ck.check_checkpoints(out)
        except Exception as e:
            raise AssertionError(f"a checkpoint on disk does not load {where}: {type(e).__name__}: {e}") from None
        events.append(
            {
                "resumed": resume,
                "outcome": outcome,
                "epochs_on_disk": len(ck.log_rows(out)),
                "loaded": loaded,
                "where": where,
            }
        )
    final = subprocess.run(
        ck.train_command(data, out, cache, EPOCHS, resume=(out / "last").exists()),
        capture_output=True,
        env=ck.ENV,
        timeout=600,
    )
    assert final.returncode == 0, (
        f"the final resume failed (seed {seed}):\n" + (final.stdout + final.stderr).decode(errors="replace")[-3000:]
    )
    return out, events


def test_training_killed_twice_resumes_to_the_end(killed_and_resumed) -> None:
    out, events = killed_and_resumed
    assert any(e["outcome"] == "killed" for e in events)
    assert [r["epoch"] for r in ck.log_rows(out)] == list(range(1, EPOCHS + 1)), events
    assert ck.check_checkpoints(out) == ["best", "last"]
    results = json.loads((out / "results.json").read_text())
    assert 1 <= results["best_epoch"] <= EPOCHS
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    print(
        "\ntraining kill trials:",
        *(f"{e['where']}: {e['outcome']}, {e['epochs_on_disk']} epochs on disk, loaded {e['loaded']}" for e in events),
        f"leftovers {leftovers}",
        sep="\n  ",
    )


def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(killed_and_resumed, scenes, tmp_path) -> None:
    """The claim of docs/reliability.md: kill -9 (twice) then --resume gives the same weights
    as a run that was never interrupted."""
    from safetensors.torch import load_file

    from captioner.checkpoint import WEIGHTS

    data, cache = scenes
    out = tmp_path / "straight"
    done = subprocess.run(ck.train_command(data, out, cache, EPOCHS), capture_output=True, env=ck.ENV, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-2000:]
    killed = killed_and_resumed[0]
    for name in (WEIGHTS, "trainer_state.safetensors"):
        a, b = load_file(str(out / "last" / name)), load_file(str(killed / "last" / name))
        assert a.keys() == b.keys()
        worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        assert worst <= 1e-6, (name, worst, f"seed {SEED}")
    assert [r["train_loss"] for r in ck.log_rows(out)] == pytest.approx(
        [r["train_loss"] for r in ck.log_rows(killed)], rel=1e-6
    )


def test_resume_after_a_torn_training_log(killed_and_resumed, tmp_path) -> None:
    """A kill after OUT/last of epoch N is written but while log.jsonl is being rewritten
    leaves the log cut inside the row of epoch N: resuming must cope (skip the torn
    line) and the finished log must still hold one row per epoch (so the log must not
    lag behind ``last``: write it first, atomically, or keep the rows in ``last``)."""
    out = tmp_path / "run"
    shutil.copytree(killed_and_resumed[0], out, symlinks=True)
    log = out / "log.jsonl"
    text = log.read_bytes()
    log.write_bytes(text[: text.rfind(b"\n", 0, len(text) - 1) + 25])  # the last row cut after 24 bytes
    cmd = [*ck.train_command(Path(), out, Path(), resume=True), "--epochs", str(EPOCHS + 1)]
    done = subprocess.run(cmd, capture_output=True, env=ck.ENV, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-2000:]
    assert [r["epoch"] for r in ck.log_rows(out)] == list(range(1, EPOCHS + 2))


@pytest.mark.parametrize("target", ["trainer_state.safetensors", "model.safetensors"])
def test_pickle_planted_in_the_resume_state_is_refused(killed_and_resumed, tmp_path, target) -> None:
    """--resume reads OUT/last: a malicious pickle there is refused and never runs."""
    from captioner.errors import CaptionerError
    from captioner.training.train import resume_config, train

    out = tmp_path / "run"
    shutil.copytree(killed_and_resumed[0], out, symlinks=True)
    marker = tmp_path / "PWNED"
    plant(out / "last" / target, marker)
    with pytest.raises(CaptionerError, match="last"):
        train(resume_config(out, epochs=EPOCHS + 1, progress=False), resume=True)
    assert not marker.exists()


def test_folder_captioning_killed_then_rerun(rel_checkpoint, tmp_path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(96):  # enough that the run cannot finish in the moment before the kill
        fmt, ext = (("JPEG", "jpg"), ("PNG", "png"))[i % 2]
        (photos / f"img{i:03d}.{ext}").write_bytes(encode(picture(40 + i, 30 + i % 7, seed=i), fmt))
    out = tmp_path / "captions.jsonl"
    expected = {p.name for p in photos.iterdir()}
    rng = random.Random(SEED)
    kill_at = rng.randint(2, 20)
    proc = ck.start(ck.caption_command(photos, out, rel_checkpoint, batch_size=2), tmp_path / "caption.log")
    outcome = ck.kill_when(proc, lambda: ck.count_lines(out) >= kill_at, rng.uniform(0, 0.05))
    data = out.read_bytes()
    assert outcome == "killed", "the run finished before it could be killed; make it longer"
    assert data.endswith(b"\n"), "a kill -9 left a partial line"
    before = [json.loads(line)["file"] for line in data.decode().splitlines()]
    assert len(before) == len(set(before)) and 0 < len(before) < len(expected)
    with open(out, "ab") as f:  # what a power cut in the middle of a write can leave
        f.write(b'{"file": "img095.png", "capt')
    rerun = subprocess.run(
        ck.caption_command(photos, out, rel_checkpoint, batch_size=8), capture_output=True, env=ck.ENV, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr.decode(errors="replace")[-2000:]
    ck.check_captions_file(out, expected)
    assert f"skipped {len(before)}" in rerun.stderr.decode()


def test_a_save_removes_what_killed_saves_left_behind(tmp_path) -> None:
    """A kill inside save_checkpoint can leave its temporary folder or the replaced old
    checkpoint beside the target; the next save there removes those of dead processes."""
    import torch

    from captioner.decoder import CaptionDecoder, DecoderConfig
    from captioner.model.checkpoint import load_checkpoint, save_checkpoint
    from captioner.vocab import Vocabulary

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        stale = [tmp_path / f".ck.tmp-{dead.pid}-x1y2", tmp_path / f".ck.old-{dead.pid}"]
        kept = [tmp_path / f".ck.tmp-{alive.pid}-z3", tmp_path / ".other.old-1", tmp_path / f".ck.old-{os.getpid()}"]
        for d in stale + kept:
            d.mkdir()
            (d / "model.safetensors").write_bytes(b"partial")
        vocab = Vocabulary.build(["a red dog"])
        cfg = DecoderConfig(vocab_size=len(vocab), feature_dim=4, embed_dim=4, hidden_dim=8, img_proj_dim=4)
        save_checkpoint(
            tmp_path / "ck",
            decoder=CaptionDecoder(cfg),
            decoder_config=cfg,
            encoder_name="e",
            preprocess={},
            vocab=vocab,
            metadata={},
            dtype=torch.float16,
        )
        assert not any(d.exists() for d in stale)
        assert all(d.exists() for d in kept)
        assert load_checkpoint(tmp_path / "ck").vocab.itos == vocab.itos
    finally:
        alive.kill()
        alive.wait()
