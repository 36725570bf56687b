"""Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``).

    {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
                 "split": "test", "cocoid": 391895, "imgid": 0,
                 "sentences": [{"raw": "A man with a red helmet ...", "tokens": ["a", "man", ...]}, ...]},
                ...],
     "dataset": "coco"}

The image path is ``images_dir / filepath / filename`` (Flickr files have no filepath).
``restval`` (the part of COCO val2014 that Karpathy's split gives to training) is
folded into ``train`` unless ``fold_restval=False``.
"""

from __future__ import annotations

from pathlib import Path

from .common import CaptionDataset, Collector, DatasetError, LoadReport, OnMissing, load_json

KARPATHY_SPLITS = ("train", "val", "test", "restval")


def load_karpathy(
    path: str | Path,
    images_dir: str | Path | None = None,
    *,
    fold_restval: bool = True,
    on_missing: OnMissing = "skip",
    check_files: bool = True,
    progress: bool | None = None,
) -> CaptionDataset:
    """Load a Karpathy split file. ``images_dir`` defaults to the file's folder."""
    path = Path(path)
    report = LoadReport(str(path))
    folder = Path(images_dir) if images_dir is not None else path.parent
    data = load_json(path, report)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(
            f"{path}: not a Karpathy split file (expected an object with an 'images' list "
            "whose entries have 'filename', 'split' and 'sentences')"
        )

    collector = Collector(path, "karpathy", report)
    first_seen: dict[object, int] = {}
    for i, img in enumerate(data["images"]):
        where = f"{path.name}: images[{i}]"
        if not isinstance(img, dict):
            report.add("malformed", where, "entry is not an object")
            continue
        filename, split, sentences = img.get("filename"), img.get("split"), img.get("sentences")
        if not isinstance(filename, str) or not filename.strip():
            report.add("malformed", where, "missing or invalid 'filename'")
            continue
        if split not in KARPATHY_SPLITS:
            report.add("malformed", where, f"'split' must be one of {list(KARPATHY_SPLITS)}, got {split!r}")
            continue
        if not isinstance(sentences, list):
            report.add("malformed", where, "missing 'sentences' list")
            continue
        filepath = img.get("filepath") or ""
        image_id = next(
            (img[k] for k in ("cocoid", "imgid") if isinstance(img.get(k), (int, str))),
            f"{filepath}/{filename}" if filepath else filename,
        )
        if image_id in first_seen:
            report.add(
                "duplicate",
                where,
                f"image id {image_id!r} already used by images[{first_seen[image_id]}]; this entry is ignored",
            )
            continue
        first_seen[image_id] = i
        if split == "restval" and fold_restval:
            split = "train"
        entry = collector.image(image_id, folder / filepath / filename, split, image_id)
        if not sentences:
            continue  # reported as an image without captions by build()
        for j, sentence in enumerate(sentences):
            s_where = f"{where}.sentences[{j}]"
            if not isinstance(sentence, dict):
                report.add("malformed", s_where, "sentence is not an object")
                continue
            raw = sentence.get("raw")
            if raw is None and isinstance(sentence.get("tokens"), list):
                raw = " ".join(str(t) for t in sentence["tokens"])
            if raw is None:
                report.add("malformed", s_where, "needs 'raw' (or 'tokens')")
                continue
            collector.caption(entry, raw, s_where)
    return collector.build(folder, on_missing, check_files, progress)
