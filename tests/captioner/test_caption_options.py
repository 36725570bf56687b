"""`captioner caption` options that change what is written: --length-penalty, --errors, and the
output format taken from the --out extension (or --format)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from captionkit import teach_checkpoint
from PIL import Image

from captioner import Captioner
from captioner.cli import main as cli_main
from captioner.folder import default_errors_path

# Each picture is taught a short caption twice and a long one once: without a length
# penalty the short one wins (log 2/3 against log 1/3), with the GNMT penalty at 5 the long
# one does (-0.405 / (8/6)^5 = -0.096 against -1.1 / (12/6)^5 = -0.034).
BEAM, PENALTY = 4, 5.0
SHORT = ["red one", "green two", "blue three"]
LONG = [f"{s} and more words after it" for s in SHORT]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three pictures and one truncated JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        save_image(folder / f"p{i}.jpg", 40 + i)
    (folder / "torn.jpg").write_bytes((folder / "p0.jpg").read_bytes()[:100])
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, photos) -> Path:
    images, captions, expect = [], [], []
    for i in range(3):
        images += [photos / f"p{i}.jpg"] * 3
        captions += [SHORT[i], SHORT[i], LONG[i]]
        expect += [SHORT[i]] * 3
    return teach_checkpoint(tmp_path_factory.mktemp("ckpt") / "two-lengths", images, captions, expect=expect)


@pytest.fixture(scope="module")
def model(model_dir) -> Captioner:
    return Captioner.load(model_dir, device="cpu")


def save_image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(path)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_length_penalty_reaches_beam_search(model, model_dir, photos, capsys):
    images = [photos / f"p{i}.jpg" for i in range(3)]
    plain = model.caption_detailed(images, beam_size=BEAM, length_penalty=0.0)
    penalised = model.caption_detailed(images, beam_size=BEAM, length_penalty=PENALTY)
    assert [r.caption for r in plain] == SHORT and [r.caption for r in penalised] == LONG
    for penalty, expected in ((0.0, plain), (PENALTY, penalised)):
        args = ["caption", *map(str, images), "-c", str(model_dir), "--json", "--beam-size", str(BEAM)]
        assert cli_main([*args, "--length-penalty", str(penalty)]) == 0
        got = json_lines(capsys.readouterr().out)
        assert [g["caption"] for g in got] == [r.caption for r in expected]
        assert [g["score"] for g in got] == [round(r.score, 4) for r in expected]


def test_length_penalty_reaches_a_folder_run(model, model_dir, photos, tmp_path, capsys):
    out = tmp_path / "penalised.jsonl"
    args = ["caption", str(photos), "-c", str(model_dir), "--out", str(out), "-q", "--beam-size", str(BEAM)]
    assert cli_main([*args, "--length-penalty", str(PENALTY)]) == 0
    records = json_lines(out.read_text())
    expected = model.caption_detailed([photos / r["file"] for r in records], beam_size=BEAM, length_penalty=PENALTY)
    assert [r["caption"] for r in records] == [e.caption for e in expected]
    assert [r["caption"] for r in records] == LONG
    capsys.readouterr()


def test_csv_from_the_out_extension_and_errors_where_asked(model, model_dir, photos, tmp_path, capsys):
    out = tmp_path / "results" / "captions.CSV"  # the extension decides, in any case
    errors = tmp_path / "elsewhere" / "failed.jsonl"
    args = ["caption", str(photos), "-c", str(model_dir), "--out", str(out), "--errors", str(errors), "-q"]
    assert cli_main(args) == 0
    summary = capsys.readouterr().err
    assert "captioned 3, skipped 0" in summary and f"failed 1 (see {errors})" in summary
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert out.read_text().splitlines()[0].startswith("file,caption,score,")
    assert [r["file"] for r in rows] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert [r["caption"] for r in rows] == model.caption([photos / r["file"] for r in rows]) == SHORT
    failed = json_lines(errors.read_text())
    assert [e["path"] for e in failed] == ["torn.jpg"] and failed[0]["reason"]
    assert not default_errors_path(out).exists()  # written where asked, not next to --out

    # any other extension is JSONL, and --format overrides the extension
    for name, fmt, expect_csv in (("c.txt", None, False), ("c.txt", "csv", True), ("c.csv", "jsonl", False)):
        target = tmp_path / fmt_dir(fmt) / name
        extra = [] if fmt is None else ["--format", fmt]
        assert cli_main(["caption", str(photos), "-c", str(model_dir), "--out", str(target), "-q", *extra]) == 0
        first = target.read_text().splitlines()[0]
        if expect_csv:
            assert first.startswith("file,caption,score,"), (name, fmt)
        else:
            assert json.loads(first)["file"] == "p0.jpg", (name, fmt)
        assert default_errors_path(target).is_file()  # the default errors file, next to the output
    capsys.readouterr()


def fmt_dir(fmt: str | None) -> str:
    return f"format-{fmt or 'auto'}"
