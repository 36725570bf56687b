"""`captioner explain` on the command line, with the shipped attention model: folders and -r as
`captioner caption` walks them, an unreadable or missing input reported by name while the others
are still drawn (exit status 1), the output folder created, and one figure per input even when
two inputs share a base name (test/000003.jpg and val/000003.jpg)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from captioner.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """images/top.jpg, images/test/000003.jpg (a cat), images/val/000003.jpg (coffee)."""
    root = tmp_path / "images"
    for split, photo in (("test", "chelsea.jpg"), ("val", "coffee.jpg")):
        (root / split).mkdir(parents=True)
        shutil.copy(DATA / photo, root / split / "000003.jpg")
    shutil.copy(DATA / "coffee.jpg", root / "top.jpg")
    return root


def test_a_bad_file_is_reported_by_name_and_the_good_ones_are_drawn(images, tmp_path, capsys):
    (tmp_path / "empty.jpg").write_bytes(b"")
    good = images / "top.jpg"
    out = tmp_path / "e" / "nested"
    code = main(["explain", str(good), str(tmp_path / "empty.jpg"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1  # as `captioner caption FILE...` does when some failed
    assert "empty.jpg" in err and "Traceback" not in err
    assert (out / "images" / "top.png").is_file()  # named as the walk keys it: from the inputs' common folder
    record = json.loads((out / "explain.json").read_text())
    assert list(record) == [str(good)] and record[str(good)]["caption"]
    assert record[str(good)]["figure"] == "images/top.png"


def test_folders_recursive_and_same_base_names_get_distinct_figures(images, tmp_path):
    out = tmp_path / "explained"
    assert main(["explain", str(images), "--out", str(out)]) == 0  # without -r: the folder's own images
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["top.png"]
    assert main(["explain", str(images), "-r", "--out", str(out)]) == 0
    record = json.loads((out / "explain.json").read_text())
    figures = {path: entry["figure"] for path, entry in record.items()}
    assert figures == {
        str(images / "test" / "000003.jpg"): "test/000003.png",
        str(images / "top.jpg"): "top.png",
        str(images / "val" / "000003.jpg"): "val/000003.png",
    }
    cat, coffee = (record[str(images / s / "000003.jpg")]["caption"] for s in ("test", "val"))
    assert cat != coffee  # two pictures, two captions: neither overwrote the other
    with Image.open(out / "test" / "000003.png") as a, Image.open(out / "val" / "000003.png") as b:
        assert a.tobytes() != b.tobytes()


def test_a_missing_input_is_reported_and_same_stems_keep_their_whole_name(images, tmp_path, capsys):
    Image.open(images / "top.jpg").save(images / "top.png")  # same stem, another extension
    args = [str(images / "top.jpg"), str(images / "top.png"), str(images / "nope.jpg")]
    code = main(["explain", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "nope.jpg" in err and "no such file" in err
    record = json.loads((tmp_path / "o" / "explain.json").read_text())
    assert sorted(e["figure"] for e in record.values()) == ["top.jpg.png", "top.png.png"]
    assert all((tmp_path / "o" / e["figure"]).is_file() for e in record.values())


def test_the_output_folder_inside_the_input_folder_is_not_read_back(images, tmp_path):
    out = images / "explain"
    assert main(["explain", str(images), "-r", "--out", str(out)]) == 0
    assert main(["explain", str(images), "-r", "--out", str(out)]) == 0  # its PNGs are not new inputs
    assert len(json.loads((out / "explain.json").read_text())) == 3


def test_an_input_is_never_overwritten_by_a_figure(images, tmp_path, capsys):
    photo = images / "top.png"
    Image.open(images / "top.jpg").save(photo)
    before = photo.read_bytes()
    assert main(["explain", str(photo), "--out", str(images)]) == 1  # its figure would be images/top.png
    assert photo.read_bytes() == before
    assert "would overwrite" in capsys.readouterr().err
    assert main(["explain", str(images), "--out", str(images)]) == 1  # a folder into itself: said so
    assert "pick another --out" in capsys.readouterr().err
    assert photo.read_bytes() == before
