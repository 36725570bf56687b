"""`captioner explain` on the command line: folders and -r as `captioner caption` walks them,
an unreadable file reported by name while the others are still drawn (exit status 1), the
output folder created, and one figure per input even when two inputs share a base name."""

from __future__ import annotations

import json

import pytest
from test_explain import _image, tiny_model  # noqa: F401 (the fixture)

from captioner.cli import main
from captioner.model import Captioner

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def loads_tiny(monkeypatch, tiny_model):  # noqa: F811
    """`Captioner.load` gives the tiny attention model the explain tests train."""
    monkeypatch.setattr(Captioner, "load", classmethod(lambda cls, *a, **k: tiny_model))
    return tiny_model


def test_a_bad_file_is_reported_by_name_and_the_good_ones_are_drawn(loads_tiny, tmp_path, capsys):
    _image("red", 4).save(tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    out = tmp_path / "e" / "nested"
    code = main(["explain", str(tmp_path / "good.png"), str(tmp_path / "empty.jpg"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # as `captioner caption FILE...` does when some failed
    assert "empty.jpg" in captured.err and "Traceback" not in captured.err
    assert (out / "good.png").is_file()
    record = json.loads((out / "explain.json").read_text())
    assert list(record) == [str(tmp_path / "good.png")]
    assert record[str(tmp_path / "good.png")]["caption"] == "a red square on gray"


def test_folders_recursive_and_same_base_names_get_distinct_figures(loads_tiny, tmp_path, capsys):
    images = tmp_path / "images"
    for split, colour in (("test", "red"), ("val", "green")):
        (images / split).mkdir(parents=True)
        _image(colour, 2).save(images / split / "000003.png")
    _image("blue", 0).save(images / "top.png")
    out = tmp_path / "explained"
    assert main(["explain", str(images), "--out", str(out)]) == 0  # without -r: the folder's own images
    assert sorted(p.name for p in out.rglob("*.png")) == ["top.png"]
    assert main(["explain", str(images), "-r", "--out", str(out)]) == 0
    record = json.loads((out / "explain.json").read_text())
    figures = {path: entry["figure"] for path, entry in record.items()}
    assert len(figures) == 3 and len(set(figures.values())) == 3
    test_fig = figures[str(images / "test" / "000003.png")]
    val_fig = figures[str(images / "val" / "000003.png")]
    assert (out / test_fig).is_file() and (out / val_fig).is_file() and test_fig != val_fig
    assert record[str(images / "val" / "000003.png")]["caption"] == "a green square on gray"
    assert record[str(images / "test" / "000003.png")]["caption"] == "a red square on gray"


def test_a_missing_input_is_reported_and_the_rest_still_drawn(loads_tiny, tmp_path, capsys):
    _image("blue", 8).save(tmp_path / "a.png")
    _image("blue", 8).save(tmp_path / "a.jpg")  # same stem, other extension: two figures
    code = main(
        [
            "explain",
            str(tmp_path / "a.png"),
            str(tmp_path / "a.jpg"),
            str(tmp_path / "nope.png"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "nope.png" in err
    record = json.loads((tmp_path / "o" / "explain.json").read_text())
    assert len(record) == 2 and len({e["figure"] for e in record.values()}) == 2
    assert all((tmp_path / "o" / e["figure"]).is_file() for e in record.values())
