"""Output files of folder captioning: every output has its own failures file."""

from __future__ import annotations

import json

from captionkit import teach_checkpoint

from captioner.folder import caption_folder
from captioner.outputs import default_errors_path


def test_each_output_format_has_its_own_errors_file(tmp_path):
    assert default_errors_path(tmp_path / "captions.jsonl").name == "captions.errors.jsonl"
    assert default_errors_path(tmp_path / "captions.csv").name == "captions.csv.errors.jsonl"
    assert default_errors_path(tmp_path / "captions.parquet").name == "captions.parquet.errors.jsonl"
    assert len({default_errors_path(tmp_path / f"captions.{ext}") for ext in ("jsonl", "csv", "parquet")}) == 3


def test_csv_and_jsonl_runs_in_one_folder_keep_their_failures_apart(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photos / "red.png")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    from captioner import Captioner

    model = Captioner.load(teach_checkpoint(tmp_path / "ckpt", [photos / "red.png"], ["a red picture"]), device="cpu")
    out = tmp_path / "out"
    for name in ("captions.jsonl", "captions.csv"):
        summary = caption_folder(model, [photos], out / name, progress=False)
        assert (summary.done, summary.failed) == (1, 1)
    jsonl_errors = (out / "captions.errors.jsonl").read_text().splitlines()
    csv_errors = (out / "captions.csv.errors.jsonl").read_text().splitlines()
    assert len(jsonl_errors) == len(csv_errors) == 1  # each run wrote its own, neither appended to the other
    assert json.loads(jsonl_errors[0])["path"].endswith("broken.png")
