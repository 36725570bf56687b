"""COCO captions: ``captions_<split>.json`` files plus a folder of images.

    {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", ...}, ...],
     "annotations": [{"id": 770337, "image_id": 391895, "caption": "A man with a red helmet ..."}, ...]}

``load_coco`` takes one such file, or a folder holding several (``captions_train2014.json``,
``captions_val2014.json``, ... or the scenes dataset's ``captions_train.json`` ...); the
split of each file comes from its name unless given.
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import (
    SPLIT_ALIASES,
    CaptionDataset,
    CaptionedImage,
    Collector,
    DatasetError,
    LoadReport,
    OnMissing,
    first_existing,
    load_json,
    resolve,
)

_SPLIT_IN_NAME = re.compile(r"(?:^|[_\-.])(train|val|valid|validation|dev|test|restval)(\d{4})?(?=$|[_\-.])")


def split_from_name(name: str) -> tuple[str | None, str | None]:
    """('val', 'val2014') from 'captions_val2014.json'; (None, None) when the name has no split."""
    m = _SPLIT_IN_NAME.search(Path(name).stem.lower())
    if not m:
        return None, None
    split = SPLIT_ALIASES.get(m.group(1), m.group(1))
    return split, m.group(1) + (m.group(2) or "")


def coco_files(folder: Path) -> list[Path]:
    """The COCO caption files of a folder (``captions_*.json``), train first."""
    files = sorted(folder.glob("captions_*.json"))
    order = {"train": 0, "restval": 1, "val": 2, "test": 3}
    return sorted(files, key=lambda p: (order.get(split_from_name(p.name)[0] or "", 9), p.name))


def default_images_dir(json_path: Path) -> Path:
    """Where the images of a COCO file probably are: ``images/``, the split folder
    (``train2014/`` beside ``annotations/``), or the file's own folder."""
    _, folder_name = split_from_name(json_path.name)
    here = json_path.parent
    candidates = [here / "images"]
    if folder_name:
        candidates += [here.parent / folder_name, here / folder_name, here.parent / "images" / folder_name]
    return first_existing(candidates, here)


def load_coco(
    path: str | Path,
    images_dir: str | Path | None = None,
    *,
    split: str | None = None,
    on_missing: OnMissing = "skip",
    check_files: bool = True,
    progress: bool | None = None,
) -> CaptionDataset:
    """Load a COCO captions file, or every ``captions_*.json`` of a folder.

    ``images_dir``: the folder ``file_name`` is relative to (default: see
    :func:`default_images_dir`). ``split``: overrides the split read from the file name
    (a name without one gives "train").
    """
    path = Path(path)
    report = LoadReport(str(path))
    if path.is_dir():
        files = coco_files(path)
        if not files:
            raise DatasetError(f"{path}: no captions_*.json file in this folder")
    else:
        files = [path]
    collector = Collector(path, "coco", report)
    for f in files:
        file_split = split or split_from_name(f.name)[0] or "train"
        folder = Path(images_dir) if images_dir is not None else default_images_dir(f)
        _read_coco_file(f, folder, file_split, collector)
    folder = Path(images_dir) if images_dir is not None else default_images_dir(files[0])
    return collector.build(folder, on_missing, check_files, progress)


def _read_coco_file(path: Path, images_dir: Path, split: str, collector: Collector) -> None:
    report = collector.report
    data = load_json(path, report)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(
            f"{path}: not a COCO captions file (expected an object with an 'images' list and an 'annotations' list)"
        )
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"{path}: 'annotations' must be a list")

    by_id: dict[object, CaptionedImage] = {}
    first_seen: dict[object, int] = {}
    for i, img in enumerate(data["images"]):
        where = f"{path.name}: images[{i}]"
        if not isinstance(img, dict):
            report.add("malformed", where, "entry is not an object")
            continue
        image_id, file_name = img.get("id"), img.get("file_name")
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            report.add("malformed", where, "missing or invalid 'id'")
            continue
        if not isinstance(file_name, str) or not file_name.strip():
            report.add("malformed", where, "missing or invalid 'file_name'")
            continue
        if image_id in first_seen:
            report.add(
                "duplicate",
                where,
                f"image id {image_id!r} already used by images[{first_seen[image_id]}]; this entry is ignored",
            )
            continue
        first_seen[image_id] = i
        by_id[image_id] = collector.image((path, image_id), resolve(images_dir, file_name), split, image_id)

    for i, ann in enumerate(annotations):
        where = f"{path.name}: annotations[{i}]"
        if not isinstance(ann, dict):
            report.add("malformed", where, "entry is not an object")
            continue
        image_id = ann.get("image_id")
        if "caption" not in ann or image_id is None:
            report.add("malformed", where, "needs 'image_id' and 'caption'")
            continue
        entry = by_id.get(image_id) if isinstance(image_id, (int, str)) else None
        if entry is None:
            report.add("unknown_image", where, f"image_id {image_id!r} is not in 'images'; caption ignored")
            continue
        collector.caption(entry, ann["caption"], where)
