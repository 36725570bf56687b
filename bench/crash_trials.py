"""kill -9 trials at uniformly random moments: training and folder captioning.

    python bench/crash_trials.py                                # 8 training + 6 folder trials
    python bench/crash_trials.py --train-trials 20 --folder-trials 10 --json trials.json

Training (tiny model, tiny built-in scenes dataset): one uninterrupted reference run is
timed and its final weights kept; then every trial starts the same run and SIGKILLs it at
a random moment (one trial in four uniformly over start-up and the first epoch, the others
uniformly over the remaining epochs, where checkpoints are written), loads every checkpoint on disk, and
finishes with ``--resume`` (or a fresh start when no ``last`` was written yet). Reported:
where the kills landed, whether every checkpoint loaded, whether the resume finished with
one log row per epoch, whether the final weights equal the uninterrupted run's, and any
temporary folders left behind.

Folder captioning: one reference run is timed; every trial SIGKILLs a run at a random
moment (one in four during start-up, the others uniformly while lines are being written),
checks the output for partial lines and duplicates, reruns, and checks that every image is
there exactly once. Results for this project: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

import crashkit as ck  # noqa: E402


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def training_trials(base: Path, n: int, rng: random.Random, epochs: int) -> dict:
    data = ck.make_scenes(base / "data")
    cache = base / "cache"
    ref = base / "reference"
    subprocess.run(ck.train_command(data, ref, cache, epochs), check=True, capture_output=True, env=ck.ENV)
    shutil.rmtree(ref)  # the first run also filled the feature cache; time a run that reuses it
    t = time.monotonic()
    proc = ck.start(ck.train_command(data, ref, cache, epochs), base / "reference.log")
    while not ck.log_rows(ref) and proc.poll() is None:
        time.sleep(0.02)
    startup = time.monotonic() - t  # start-up, data, feature cache, first epoch
    assert proc.wait() == 0, (base / "reference.log").read_text()
    training = time.monotonic() - t - startup
    print(
        f"training reference: {startup:.1f} s to the first epoch, then {training:.1f} s for {epochs - 1} more",
        flush=True,
    )
    trials = []
    for i in range(n):
        out = base / f"trial{i}"
        # one trial in four during start-up (feature cache, first epoch), the others uniformly
        # over the epochs that follow (where the checkpoints are written)
        if i % 4 == 0:
            after, when = 0, rng.uniform(0.0, startup)
        else:
            after, when = 1, rng.uniform(0.0, training)
        tr = ck.train_trial(data, out, cache, when, after_epochs=after, epochs=epochs)
        ok_epochs = tr.epochs_after == list(range(1, epochs + 1))
        identical = tr.finish_rc == 0 and same_weights(ref / "last", out / "last")
        leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
        trials.append(
            {
                "kill_after_epochs": after,
                "kill_at_s": round(when, 2),
                "outcome": tr.outcome,
                "epochs_on_disk": tr.epochs_before,
                "loaded": tr.loaded,
                "resumed": tr.resumed,
                "finish_rc": tr.finish_rc,
                "one_row_per_epoch": ok_epochs,
                "weights_equal_reference": identical,
                "leftovers_after_kill": tr.leftovers,
                "leftovers_at_end": leftovers,
            }
        )
        print(f"  trial {i + 1}/{n}: {tr.line()}; identical weights {identical}; leftovers {leftovers}", flush=True)
        if tr.finish_rc:
            print(tr.finish_output[-2000:])
    return {
        "reference_startup_seconds": round(startup, 1),
        "reference_training_seconds": round(training, 1),
        "epochs": epochs,
        "trials": trials,
    }


def folder_trials(base: Path, n: int, rng: random.Random, checkpoint: Path) -> dict:
    from hostile import encode, picture

    photos = base / "photos"
    photos.mkdir()
    for i in range(96):
        fmt, ext = (("JPEG", "jpg"), ("PNG", "png"))[i % 2]
        (photos / f"img{i:03d}.{ext}").write_bytes(encode(picture(40 + i, 30 + i % 7, seed=i), fmt))
    expected = {p.name for p in photos.iterdir()}
    ref = base / "reference.jsonl"
    t = time.monotonic()
    proc = ck.start(ck.caption_command(photos, ref, checkpoint), base / "reference.log")
    while ck.count_lines(ref) == 0 and proc.poll() is None:
        time.sleep(0.01)
    startup = time.monotonic() - t
    assert proc.wait() == 0, (base / "reference.log").read_text()
    captioning = time.monotonic() - t - startup
    print(
        f"folder reference: {startup:.1f} s to the first line, then {captioning:.1f} s for the other "
        f"{len(expected) - 1} images",
        flush=True,
    )
    trials = []
    for i in range(n):
        out = base / f"captions{i}.jsonl"
        # one trial in four during start-up, the others uniformly while lines are being written
        first_line = i % 4 != 0
        when = rng.uniform(0.0, captioning if first_line else startup)
        proc = ck.start(ck.caption_command(photos, out, checkpoint), base / f"caption{i}.log")
        outcome = ck.kill_when(proc, (lambda out=out: ck.count_lines(out) > 0) if first_line else (lambda: True), when)
        lines_before = ck.count_lines(out)
        torn = out.exists() and out.stat().st_size > 0 and not out.read_bytes().endswith(b"\n")
        rerun = subprocess.run(ck.caption_command(photos, out, checkpoint), capture_output=True, env=ck.ENV)
        try:
            ck.check_captions_file(out, expected)
            complete = rerun.returncode == 0
        except AssertionError as e:
            complete = False
            print("   ", e)
        trials.append(
            {
                "kill_at_s": round(when, 2),
                "outcome": outcome,
                "lines_before": lines_before,
                "partial_line_after_kill": torn,
                "rerun_rc": rerun.returncode,
                "complete_no_duplicates": complete,
            }
        )
        print(
            f"  trial {i + 1}/{n}: kill at {when:.2f} s: {outcome} with {lines_before} lines "
            f"(partial line: {torn}); rerun exit {rerun.returncode}, complete and unique: {complete}",
            flush=True,
        )
    return {
        "reference_startup_seconds": round(startup, 1),
        "reference_captioning_seconds": round(captioning, 1),
        "images": len(expected),
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-trials", type=int, default=8)
    p.add_argument("--folder-trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=30, help="epochs of the tiny run (default 30)")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill times (default: random, printed)")
    p.add_argument("--checkpoint", help="checkpoint for the folder runs (default: a small random one)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    base = Path(tempfile.mkdtemp(prefix="crash-trials-"))
    results: dict = {"seed": seed}
    if args.train_trials:
        results["training"] = training_trials(base / "train", args.train_trials, rng, args.epochs)
    if args.folder_trials:
        from relkit import build_checkpoint

        ckpt = Path(args.checkpoint) if args.checkpoint else build_checkpoint(base / "ckpt")
        (base / "folder").mkdir()
        results["folder"] = folder_trials(base / "folder", args.folder_trials, rng, ckpt)
    good_train = all(
        t["finish_rc"] == 0 and t["one_row_per_epoch"] for t in results.get("training", {}).get("trials", [])
    )
    good_folder = all(
        t["complete_no_duplicates"] and not t["partial_line_after_kill"]
        for t in results.get("folder", {}).get("trials", [])
    )
    print(
        f"verdict: training {'PASS' if good_train else 'FAIL'}, folder {'PASS' if good_folder else 'FAIL'} "
        f"(files in {base})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if good_train and good_folder else 1


if __name__ == "__main__":
    sys.exit(main())
