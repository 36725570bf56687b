"""A folder's image without an extension (a camera dump, `000003`) is found by its first
bytes, not skipped without a word; other extension-less files (README, Makefile) are not."""

from __future__ import annotations

import shutil
from pathlib import Path

from captioner.walk import find_images

DATA = Path(__file__).resolve().parents[1] / "data"


def test_an_image_without_an_extension_is_found_by_its_bytes(tmp_path):
    shutil.copy(DATA / "coffee.jpg", tmp_path / "000003")  # a JPEG with no extension
    shutil.copy(DATA / "chelsea.jpg", tmp_path / "cat.jpg")
    (tmp_path / "README").write_text("photos of the kitchen\n")
    (tmp_path / "notes.txt").write_bytes((DATA / "coffee.jpg").read_bytes())  # another extension: not an image name
    (tmp_path / "empty").write_bytes(b"")
    items, problems = find_images([tmp_path])
    assert [it.key for it in items] == ["000003", "cat.jpg"]
    assert problems == []


def test_sub_folders_too(tmp_path):
    (tmp_path / "a").mkdir()
    shutil.copy(DATA / "coffee.jpg", tmp_path / "a" / "IMG_0001")
    items, _ = find_images([tmp_path], recursive=True)
    assert [it.key for it in items] == ["a/IMG_0001"]
