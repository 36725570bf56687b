"""`captioner data stats`: exit status 1 when the dataset has problems (malformed entries,
missing images, ...), 0 when it has none, and each problem is reported once, not as a count
line in the statistics and again in the problem list."""

from __future__ import annotations

import json

from PIL import Image

from captioner.cli import main


def _coco(folder, *, broken: bool):
    (folder / "images").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (80 * i, 0, 0)).save(folder / "images" / f"{i}.jpg")
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)]
    annotations = [{"image_id": i, "caption": "a red square"} for i in range(3)]
    if broken:
        images += [{"id": 3, "file_name": "3.jpg"}, "not an entry"]  # a missing image, a malformed entry
        annotations += [{"image_id": 99, "caption": "nobody's"}, {"caption": "no image id"}]
    (folder / "captions_train.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return folder


def test_malformed_entries_exit_1_and_each_problem_is_said_once(tmp_path, capsys):
    data = _coco(tmp_path / "coco", broken=True)
    assert main(["data", "stats", str(data)]) == 1
    out, err = capsys.readouterr()
    both = out + err
    assert "images       3" in out  # the statistics are still printed
    for where in ("images[4]", "annotations[3]", "annotations[4]", "3.jpg"):
        assert both.count(where) == 1, (where, both)
    assert both.count("malformed lines") == 1 and both.count("image files missing") == 1, both
    assert "Traceback" not in both


def test_json_mode_exits_1_too_and_keeps_stdout_json(tmp_path, capsys):
    data = _coco(tmp_path / "coco", broken=True)
    assert main(["data", "stats", str(data), "--json"]) == 1
    out, err = capsys.readouterr()
    stats = json.loads(out)
    assert stats["problems"]["malformed"] == 2 and stats["missing_files"] == 1
    assert "annotations[4]" in err


def test_a_clean_dataset_exits_0(tmp_path, capsys):
    data = _coco(tmp_path / "coco", broken=False)
    assert main(["data", "stats", str(data)]) == 0
    out, err = capsys.readouterr()
    assert "images       3" in out and err == ""
