"""kill -9 trials: start a real ``captioner`` command, SIGKILL it at some point, check what
it left on disk, then finish the job and check again.

Used by tests/reliability/test_crash.py (two short trials of each kind) and by
bench/crash_trials.py (many trials at uniformly random times, written down in
docs/reliability.md).

Training: every checkpoint folder on disk (``best``, ``last``) must load (config, vocabulary,
weights that fit the decoder, and for ``last`` the trainer state), and ``--resume`` (or a
fresh start when no ``last`` exists yet) must finish with one log row per epoch.
Folder captioning: a rerun with the same ``--out`` must complete with every image exactly
once and no partial line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TRAIN_EPOCHS = 12
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def make_scenes(out: Path, train: int = 16, val: int = 4) -> Path:
    """A tiny built-in scenes dataset (the same as ``captioner data scenes``)."""
    from captioner.training.scenes import CATEGORIES, generate_scenes

    generate_scenes(
        out,
        {"train": train, "val": val, "test": 0},
        0,
        workers=1,
        image_format="jpeg",
        categories=list(CATEGORIES),
        overwrite=False,
        progress=False,
    )
    return out


def train_command(data: Path, out: Path, cache: Path, epochs: int = TRAIN_EPOCHS, resume: bool = False) -> list[str]:
    """``captioner train`` with a tiny model; with ``resume`` only ``--out --resume``."""
    base = [sys.executable, "-m", "captioner", "train"]
    if resume:
        return [*base, "--out", str(out), "--resume"]
    return [
        *base,
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--epochs",
        str(epochs),
        "--embed-dim",
        "16",
        "--hidden-dim",
        "32",
        "--img-proj-dim",
        "16",
        "--batch-size",
        "8",
        "--warmup-steps",
        "2",
        "--patience",
        "0",
        "--no-plot",
        "--no-progress",
        "--no-evaluate-test",
        "--device",
        "cpu",
    ]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], extra_s: float, timeout_s: float = 300) -> str:
    """Wait until ``ready()`` (or the process ends), sleep ``extra_s``, then SIGKILL.
    Returns "killed" or "finished" (the process ended before the kill)."""
    deadline = time.monotonic() + timeout_s
    while not ready() and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the kill point was never reached")
        time.sleep(0.02)
    end = time.monotonic() + extra_s
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        return "finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    return "killed"


def log_rows(out: Path) -> list[dict]:
    """The rows of OUT/log.jsonl that parse (the file may be read while it is rewritten)."""
    path = out / "log.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def check_checkpoints(out: Path) -> list[str]:
    """Load every checkpoint folder in a run folder; returns their names. Raises on any
    folder that does not load completely."""
    from captioner.decoder import CaptionDecoder
    from captioner.model.checkpoint import load_checkpoint
    from captioner.training.train import read_last

    loaded = []
    for name in ("best", "last"):
        folder = out / name
        if not folder.exists():
            continue
        ck = load_checkpoint(folder)  # config, vocabulary and weights agree
        CaptionDecoder(ck.decoder_config).load_state_dict(ck.decoder_state, strict=True)
        if name == "last":
            meta, tensors = read_last(out)  # the trainer state --resume needs
            assert meta["trainer"]["epoch"] >= 1 and tensors
        loaded.append(name)
    return loaded


@dataclass
class TrainTrial:
    """What one training kill trial saw."""

    kill_after_s: float
    outcome: str  # killed | finished
    epochs_before: int
    loaded: list[str]
    leftovers: list[str]
    resumed: bool
    finish_rc: int
    epochs_after: list[int] = field(default_factory=list)
    finish_output: str = ""

    def line(self) -> str:
        then = (
            "it had finished"
            if self.outcome == "finished"
            else f"{'--resume' if self.resumed else 'fresh start'} -> exit {self.finish_rc}"
        )
        return (
            f"kill {self.kill_after_s:.2f} s after start: {self.outcome} with {self.epochs_before} epoch(s) done; "
            f"loaded {self.loaded or 'nothing (none written yet)'}; {then}, "
            f"epochs logged {self.epochs_after[:1]}..{self.epochs_after[-1:]}"
        )


def train_trial(
    data: Path, out: Path, cache: Path, kill_after_s: float, *, after_epochs: int = 0, epochs: int = TRAIN_EPOCHS
) -> TrainTrial:
    """Start training, SIGKILL it ``kill_after_s`` seconds after ``after_epochs`` epochs are
    logged (0: after the start), check the checkpoints, then resume (or restart) to the end."""
    log = out.parent / f"{out.name}.log"
    proc = start(train_command(data, out, cache, epochs), log)
    t0 = time.monotonic()
    outcome = kill_when(proc, lambda: len(log_rows(out)) >= after_epochs, kill_after_s)
    killed_at = time.monotonic() - t0
    before = len(log_rows(out))
    try:
        loaded = check_checkpoints(out)
    except Exception as e:
        loaded = [f"LOAD FAILED: {type(e).__name__}: {e}"]
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.exists() else []
    resumed = (out / "last").exists()
    if outcome == "finished":
        rc, output = proc.returncode, ""
    else:
        cmd = train_command(data, out, cache, epochs, resume=resumed)
        done = subprocess.run(cmd, capture_output=True, env=ENV, timeout=600)
        rc, output = done.returncode, (done.stdout + done.stderr).decode(errors="replace")
    rows = log_rows(out)
    return TrainTrial(killed_at, outcome, before, loaded, leftovers, resumed, rc, [r["epoch"] for r in rows], output)


# ---------------------------------------------------------------------------- folder captioning
def caption_command(photos: Path, out: Path, checkpoint: Path, batch_size: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "captioner",
        "caption",
        str(photos),
        "--out",
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--batch-size",
        str(batch_size),
        "--workers",
        "1",
        "--quiet",
    ]


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def check_captions_file(path: Path, expected: set[str]) -> None:
    """Every expected file exactly once, every line whole JSON, nothing else."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), "the captions file ends with a partial line"
    keys = [json.loads(line)["file"] for line in data.decode("utf-8").splitlines()]
    dupes = {k for k in keys if keys.count(k) > 1}
    assert not dupes, f"captioned more than once: {sorted(dupes)[:5]}"
    assert set(keys) == expected, (
        f"missing {sorted(expected - set(keys))[:5]}, extra {sorted(set(keys) - expected)[:5]}"
    )
