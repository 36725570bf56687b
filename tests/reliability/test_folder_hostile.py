"""Hostile files through ``captioner caption DIR --out ...`` (the real command, in a subprocess).

One run over a folder holding the whole hostile corpus plus file-system oddities (a broken
symbolic link, a FIFO, a folder named like an image, hidden files, file names with line
breaks, terminal escapes, leading dashes, backslashes and bytes that are not UTF-8). The
run must complete; every image file must be in exactly one of the two outputs, the
captions file when the safe loader decodes it and the errors file (with the loader's
reason) when it does not; each corpus file must land where the corpus says it must (its
expected outcome is written in hostile.py, not asked of the loader); and the run must write
nothing but those two files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hostile import encode, picture, write_corpus

from captioner.encoders import get_spec
from captioner.errors import ImageLoadError
from captioner.images import load_image

DRAFT = get_spec("efficientnet_lite0").preprocess.draft_size
#: The extensions a folder run takes as images (docs/folder_and_evaluate.md); others are not looked at.
WALKED = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".heic", ".avif"}
ODD_NAMES = [
    "-rf.jpg",
    "line\nbreak.jpg",
    "tab\there.jpg",
    "esc\x1b[31mred.jpg",
    "back\\slash.jpg",
    "..jpg",
    "spaces   .jpg",
    "quote\"'.jpg",
    "UPPER.JPG",
    "ünïcödé.jpg",
    "x" * 200 + ".jpg",
]


def run_caption(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "captioner", "caption", *args], capture_output=True, timeout=timeout, env=env
    )


def snapshot(root: Path) -> set[str]:
    """Every path under ``root`` (files, links, folders), relative, as bytes-safe strings."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            out.add(os.fsdecode(os.path.relpath(os.path.join(dirpath, name), os.fsencode(root))))
    return out


def read_jsonl(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path} ends with a partial line"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def test_folder_run_over_hostile_files(rel_checkpoint, corpus, tmp_path) -> None:
    photos = tmp_path / "photos"
    samples = write_corpus(photos, corpus)
    img = encode(picture(32, 24), "PNG")
    for name in ODD_NAMES:
        (photos / name).write_bytes(img)
    (photos / os.fsdecode(b"latin1-\xe9t\xe9.png")).write_bytes(img)  # not valid UTF-8
    (photos / ".hidden.jpg").write_bytes(img)  # skipped: hidden
    (photos / "notes.txt").write_bytes(b"not an image, no image extension: ignored")
    (photos / "folder.jpg").mkdir()  # a folder named like an image: not entered without -r
    (photos / "folder.jpg" / "inside.png").write_bytes(img)
    (photos / "dangling.jpg").symlink_to(tmp_path / "does-not-exist.jpg")
    os.mkfifo(photos / "pipe.jpg")  # reading it would block forever: must be reported, not opened
    outdir = tmp_path / "out"
    before = snapshot(tmp_path)

    r = run_caption(
        str(photos),
        "--out",
        str(outdir / "captions.jsonl"),
        "--checkpoint",
        str(rel_checkpoint),
        "--batch-size",
        "8",
        "--workers",
        "2",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]

    created = snapshot(tmp_path) - before
    assert created == {"out", "out/captions.jsonl", "out/captions.errors.jsonl"}, created
    captions = read_jsonl(outdir / "captions.jsonl")
    errors = read_jsonl(outdir / "captions.errors.jsonl")
    done = [rec["file"] for rec in captions]
    failed = {rec["path"]: rec["reason"] for rec in errors}
    assert len(done) == len(set(done)), "a file was captioned twice"
    assert len(failed) == len(errors), "a file was reported twice"
    assert not set(done) & set(failed), "a file is both captioned and failed"

    expected_ok, expected_err, codes = set(), {}, {}
    for entry in os.listdir(photos):
        path = photos / entry
        if entry.startswith(".") or path.suffix.lower() not in WALKED:
            continue
        if path.is_dir() or entry in ("dangling.jpg", "pipe.jpg"):
            continue
        try:
            load_image(path, name=entry, draft_size=DRAFT)
            expected_ok.add(entry)
        except ImageLoadError as e:
            expected_err[entry] = e.reason
            codes[entry] = e.code
    assert set(done) == expected_ok
    assert set(failed) == set(expected_err) | {"dangling.jpg", "pipe.jpg"}
    for name, reason in expected_err.items():
        assert failed[name] == reason, name
    assert "broken" in failed["dangling.jpg"] and "not a regular file" in failed["pipe.jpg"]
    for name, sample in samples.items():  # the corpus's own verdicts hold on the command line too
        if sample.ext not in WALKED:  # .ico, .fits, ...: not image files to a folder run
            assert name not in done and name not in failed, name
            continue
        if sample.expect == "ok":
            assert name in done, f"{name}: {failed.get(name)}"
        elif sample.expect == "bad":
            assert name in failed, name
        if name in failed:  # refused for a reason the corpus allows (a bomb is too_large, not unreadable)
            assert codes.get(name) in sample.outcomes, f"{name} ({sample.note}): {failed[name]}"
        else:
            assert "ok" in sample.outcomes, f"{name} ({sample.note}) was captioned"
    for rec in captions:  # keys are relative names, never paths that lead elsewhere
        assert not rec["file"].startswith("/") and ".." not in Path(rec["file"]).parts
        assert isinstance(rec["caption"], str)
    assert f"captioned {len(done)}" in r.stderr.decode(errors="replace")
    print(
        f"\nfolder run: {len(samples)} corpus files + {len(os.listdir(photos)) - len(samples)} odd entries -> "
        f"{len(done)} captioned, {len(failed)} in the errors file"
    )
