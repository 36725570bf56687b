"""A folder run interrupted (Ctrl-C) before any file failed leaves no empty errors file; one
interrupted after a failure keeps the failure listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from captioner.folder import caption_folder
from captioner.outputs import default_errors_path
from captioner.runtime.captioner import load_captioner

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def model():
    return load_captioner()  # the shipped weights


def _interrupt(record: dict) -> None:
    raise KeyboardInterrupt


def test_an_interrupted_run_without_failures_leaves_no_errors_file(model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        shutil.copy(DATA / "coffee.jpg", photos / f"{i}.jpg")
    out = tmp_path / "captions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        caption_folder(model, [photos], out, batch_size=1, workers=0, on_result=_interrupt)
    assert len(out.read_text().splitlines()) == 1  # the caption written before the interrupt
    assert not default_errors_path(out).exists()


def test_an_interrupted_run_keeps_the_failures_it_met(model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "0-broken.jpg").write_bytes(b"not a jpeg")
    shutil.copy(DATA / "coffee.jpg", photos / "1.jpg")
    out = tmp_path / "captions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        caption_folder(model, [photos], out, batch_size=1, workers=0, on_result=_interrupt)
    (error,) = map(json.loads, default_errors_path(out).read_text().splitlines())
    assert error["file"] == "0-broken.jpg"
