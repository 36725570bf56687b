"""Folder captioning: the walk, the errors file, crash-safe resumable output."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from captionkit import teach_checkpoint
from PIL import Image

from captioner import Captioner
from captioner.cli import main as cli_main
from captioner.errors import CaptionerError
from captioner.folder import (
    caption_folder,
    caption_stream,
    default_errors_path,
    find_images,
    overlapped_stream,
    read_records,
)

PYTHON = sys.executable


# ---------------------------------------------------------------------------- fixtures
# Every picture the tests below write, as (seed, format): each gets its own caption.
PICTURES = [
    (1, "JPEG"),
    (2, "PNG"),
    (3, "JPEG"),
    (9, "JPEG"),
    *((s, "JPEG") for s in (20, 21, 22)),
    *((s, "JPEG") for s in range(100, 108)),
]


def caption_of(seed: int) -> str:
    """What the taught model says about the picture ``save_image`` draws from ``seed``."""
    return f"image {seed}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small decoder on the real EfficientNet-Lite0 encoder, taught a caption per picture.

    Distinct captions make "the captions are the model's own" checkable: a caption written
    against the wrong file would name another picture.
    """
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for seed, fmt in PICTURES:
        paths.append(folder / f"{seed}.{fmt.lower()}")
        save_image(paths[-1], seed, fmt=fmt)
    return teach_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", paths, [caption_of(s) for s, _ in PICTURES])


@pytest.fixture(scope="module")
def model(model_dir) -> Captioner:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return Captioner.load(model_dir, device="cpu")


def save_image(path: Path, seed: int, size=(48, 32), fmt: str | None = None) -> None:
    """A smooth random picture (blurred noise), small so the tests stay fast."""
    rng = np.random.default_rng(seed)
    small = (rng.random((3, 4, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(path, format=fmt)


def make_messy_folder(root: Path) -> None:
    """Good, corrupt, empty, non-image, hidden and nested files, a symlink loop, a broken link."""
    save_image(root / "b_good.jpg", 1)
    save_image(root / "a_good.PNG", 2, fmt="PNG")
    save_image(root / "nested" / "deeper" / "c_deep.jpg", 3)
    save_image(root / ".hidden.jpg", 4)
    save_image(root / ".hidden_dir" / "inside.jpg", 5)
    jpeg = (root / "b_good.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated JPEG
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a picture\n")
    (root / "notes.txt").write_text("not an image extension: ignored\n")
    os.symlink("..", root / "nested" / "loop")  # nested/loop -> root: a cycle
    os.symlink("no_such_file.jpg", root / "broken.jpg")


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "the file ends with a partial line"
    return data.split(b"\n")[:-1]


# ---------------------------------------------------------------------------- the walk
def test_walk_skips_hidden_follows_links_once_and_sorts(tmp_path):
    make_messy_folder(tmp_path)
    items, problems = find_images([tmp_path], recursive=True)
    keys = [i.key for i in items]
    assert keys == ["a_good.PNG", "b_good.jpg", "corrupt.jpg", "empty.jpg", "nested/deeper/c_deep.jpg", "text.jpg"]
    assert [(p.key, p.reason) for p in problems] == [("broken.jpg", "broken symbolic link")]
    flat, _ = find_images([tmp_path], recursive=False)
    assert "nested/deeper/c_deep.jpg" not in [i.key for i in flat] and len(flat) == 5
    # several inputs: keys relative to their common folder; a file named directly is taken as is
    both, _ = find_images([tmp_path / "nested" / "deeper", tmp_path / "notes.txt"])
    assert [i.key for i in both] == ["nested/deeper/c_deep.jpg", "notes.txt"]
    with pytest.raises(CaptionerError, match="no such file or folder"):
        find_images([tmp_path / "missing"])


# ---------------------------------------------------------------------------- a run
def test_messy_folder_run_reports_failures_and_rerun_skips_done(model, tmp_path):
    root = tmp_path / "photos"
    make_messy_folder(root)
    out = tmp_path / "out" / "captions.jsonl"
    seen: list[dict] = []
    summary = caption_folder(
        model, [root], out, recursive=True, batch_size=2, workers=2, progress=False, on_result=seen.append
    )
    records = [json.loads(line) for line in lines_of(out)]
    assert [r["file"] for r in records] == ["a_good.PNG", "b_good.jpg", "nested/deeper/c_deep.jpg"]
    assert records == seen
    assert all(isinstance(r["caption"], str) and r["score"] <= 0 for r in records)
    # the captions are the model's own, as the library API gives them
    direct = model.caption_detailed([root / "a_good.PNG", root / "b_good.jpg"])
    assert [r["caption"] for r in records[:2]] == [d.caption for d in direct]
    assert [r["caption"] for r in records] == [caption_of(2), caption_of(1), caption_of(3)]  # each its own file's

    errors = {e["path"]: e["reason"] for e in map(json.loads, lines_of(default_errors_path(out)))}
    assert set(errors) == {"broken.jpg", "corrupt.jpg", "empty.jpg", "text.jpg"}
    assert "empty" in errors["empty.jpg"] and "not a recognised image" in errors["text.jpg"]
    assert "truncated" in errors["corrupt.jpg"] or "corrupt" in errors["corrupt.jpg"]
    assert (summary.found, summary.done, summary.skipped, summary.failed) == (6, 3, 0, 4)
    assert summary.images_per_second > 0 and "failed 4" in summary.line()

    # a rerun skips what is done, retries the failures, and duplicates nothing
    save_image(root / "nested" / "new.jpg", 9)
    again = caption_folder(model, [root], out, recursive=True, batch_size=2, workers=0, progress=False)
    assert (again.done, again.skipped, again.failed) == (1, 3, 4)
    assert [json.loads(line)["file"] for line in lines_of(out)] == [r["file"] for r in records] + ["nested/new.jpg"]
    assert json.loads(lines_of(out)[-1])["caption"] == caption_of(9)
    assert len(lines_of(default_errors_path(out))) == 4  # the latest run's failures, not accumulated


def test_csv_output_resumes_after_a_torn_line(model, tmp_path):
    for i in range(3):
        save_image(tmp_path / "in" / f"img{i}.jpg", 20 + i)
    out = tmp_path / "captions.csv"
    first = caption_folder(model, [tmp_path / "in"], out, batch_size=8, progress=False)
    assert first.done == 3 and not default_errors_path(out).exists()  # no failures: no errors file
    text = out.read_text()
    assert text.splitlines()[0] == "file,caption,score,confidence,in_domain,domain_distance,labels"
    rows = read_records(out, "csv")
    assert [r["caption"] for r in csv_rows(out)] == [caption_of(20 + i) for i in range(3)]
    # simulate a crash that tore the last line: drop it and leave half of it
    lines = text.splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    again = caption_folder(model, [tmp_path / "in"], out, batch_size=8, progress=False)
    assert (again.done, again.skipped) == (1, 2)
    assert out.read_text() == text  # the torn line was cut, then written again whole
    assert read_records(out, "csv") == rows


def test_refuses_to_append_to_an_unrelated_file(model, tmp_path):
    save_image(tmp_path / "in" / "x.jpg", 1)
    out = tmp_path / "data.jsonl"
    out.write_text('{"name": "something else"}\n')
    with pytest.raises(CaptionerError, match="line 1 is not a captions record"):
        caption_folder(model, [tmp_path / "in"], out, progress=False)
    assert out.read_text() == '{"name": "something else"}\n'  # untouched


def test_cli_folder_needs_out_and_writes_jsonl(model_dir, tmp_path, capsys):
    save_image(tmp_path / "in" / "one.jpg", 1)
    assert cli_main(["caption", str(tmp_path / "in"), "-c", str(model_dir)]) == 1
    assert "is a folder; add --out" in capsys.readouterr().err
    out = tmp_path / "o.jsonl"
    assert cli_main(["caption", str(tmp_path / "in"), "-c", str(model_dir), "--out", str(out), "-q"]) == 0
    assert [json.loads(line)["file"] for line in lines_of(out)] == ["one.jpg"]
    assert json.loads(lines_of(out)[0])["caption"] == caption_of(1)
    assert "captioned 1, skipped 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------- crash safety
KILLER = textwrap.dedent("""
    # Run `captioner caption` and SIGKILL the process in the middle of writing line N+1:
    # half of that line reaches the file, then the process dies (the worst a crash can do).
    import os, signal, sys
    import captioner.folder as folder
    limit = int(os.environ["KILL_AFTER_LINES"])
    state = {"n": 0}
    original = folder.LineWriter._write_bytes
    def dying_write(self, data):
        if self.path.name.endswith(".jsonl") and "errors" not in self.path.name:
            if state["n"] == limit:
                original(self, data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            state["n"] += 1
        original(self, data)
    folder.LineWriter._write_bytes = dying_write
    from captioner.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_run_resumes_without_duplicate_or_partial_lines(model, model_dir, tmp_path):
    folder = tmp_path / "many"
    for i in range(8):
        save_image(folder / f"{i:02d}.jpg", 100 + i)
    out = tmp_path / "captions.jsonl"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [
            PYTHON,
            str(script),
            "caption",
            str(folder),
            "--out",
            str(out),
            "-c",
            str(model_dir),
            "--batch-size",
            "2",
            "--workers",
            "2",
            "-q",
        ],
        env={**os.environ, "KILL_AFTER_LINES": "3", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    data = out.read_bytes()
    assert data.count(b"\n") == 3 and not data.endswith(b"\n")  # 3 lines and a torn fourth
    before = [json.loads(line) for line in data.split(b"\n")[:3]]

    summary = caption_folder(model, [folder], out, batch_size=4, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (5, 3, 0)
    after = [json.loads(line) for line in lines_of(out)]
    files = [r["file"] for r in after]
    assert files == [f"{i:02d}.jpg" for i in range(8)]  # all present, once, in order
    assert after[:3] == before
    # what the killed process wrote is what the model says, each caption of its own file
    assert [r["caption"] for r in before] == model.caption([folder / r["file"] for r in before])
    assert [r["caption"] for r in after] == [caption_of(100 + i) for i in range(8)]


def test_the_overlapped_stream_gives_the_rows_of_the_plain_one(model, tmp_path):
    """Captions generated on their own thread while the next batch is encoded: the same
    rows as the one-thread stream, the captions and the failures each in input order (a
    failure comes as soon as it is reached), over several batches and a short last one."""
    for seed in (1, 3, 9, 20, 21, 22, 100, 101, 102):
        save_image(tmp_path / f"{seed}.jpg", seed)
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    items, _ = find_images([tmp_path])
    got = list(overlapped_stream(model, items, batch_size=4, workers=2))
    want = list(caption_stream(model, items, batch_size=4, workers=2))
    assert len(got) == len(want) == len(items)
    for keep in (lambda r: r is not None, lambda r: r is None):
        assert [(it.key, why) for it, r, why in got if keep(r)] == [(it.key, why) for it, r, why in want if keep(r)]
    assert [r.caption for _, r, _ in got if r is not None] == [r.caption for _, r, _ in want if r is not None]
    for it, r, why in got:
        if it.key == "bad.jpg":
            assert r is None and why
        else:
            assert r is not None and r.caption == caption_of(int(it.key.split(".")[0]))
