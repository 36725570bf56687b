"""What `captioner train` prints reads as sentences: the data's sizes as numbers per split
("train 2 images (2 captions)"), not a Python dict."""

from __future__ import annotations

import json

from PIL import Image

from captioner.cli import main
from captioner.training.splits import sizes_line


def test_sizes_line_reads_as_words():
    info = {"splits": {"train": 32000, "val": 1}, "captions": {"train": 160000, "val": 5}}
    assert sizes_line(info) == "train 32,000 images (160,000 captions), val 1 image (5 captions)"


def test_train_prints_the_data_sizes_readably(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(tmp_path / "images" / f"{i}.jpg")
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(4)]
    annotations = [{"image_id": i, "caption": "a red square"} for i in range(4)]
    (tmp_path / "captions_train.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "1", "--hidden-dim", "8"]
    argv += ["--embed-dim", "8", "--img-proj-dim", "8", "--no-plot", "--quiet", "--cache-dir", str(tmp_path / "c")]
    argv += ["--no-evaluate-test", "--threads", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("data: "))
    assert line.startswith("data: train 3 images (3 captions), val 1 image (1 caption); vocabulary"), line
    assert "{" not in line
