"""Flickr8k / Flickr30k token files with the official split lists.

    Flickr8k.token.txt:        1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress is climbing ...
    Flickr_8k.trainImages.txt: 2513260012_03d33305cf.jpg   (one file name per line; also devImages, testImages)

Flickr30k's ``results_20130124.token`` has the same shape. With split lists, an image
in none of them is reported and left out (the Flickr8k token file names 8092 images,
its lists 8000); without lists every image goes to ``default_split``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import CaptionDataset, Collector, LoadReport, OnMissing, first_existing, iter_text_lines

# file name patterns of the official lists, by split
SPLIT_LIST_PATTERNS = {
    "train": ("*trainImages.txt", "*train_images.txt"),
    "val": ("*devImages.txt", "*dev_images.txt", "*valImages.txt"),
    "test": ("*testImages.txt", "*test_images.txt"),
}
_TOKEN_LINE = re.compile(r"^(?P<file>[^\t#]+)#(?P<n>\d+)\t(?P<caption>.*)$")
IMAGE_FOLDERS = (
    "Flicker8k_Dataset",
    "Flickr8k_Dataset",
    "Flickr8k_Images",
    "flickr30k-images",
    "flickr30k_images",
    "Images",
    "images",
)


def find_split_lists(folder: Path) -> dict[str, Path]:
    """The split list files beside a token file, by split."""
    found = {}
    for split, patterns in SPLIT_LIST_PATTERNS.items():
        for pattern in patterns:
            matches = sorted(folder.glob(pattern))
            if matches:
                found[split] = matches[0]
                break
    return found


def load_flickr(
    token_file: str | Path,
    images_dir: str | Path | None = None,
    *,
    split_lists: dict[str, str | Path] | None = None,
    default_split: str = "train",
    on_missing: OnMissing = "skip",
    check_files: bool = True,
    progress: bool | None = None,
) -> CaptionDataset:
    """Load a Flickr token file.

    ``split_lists`` maps "train"/"val"/"test" to list files (default: the official lists
    found beside the token file; pass ``{}`` to ignore them). ``images_dir`` defaults
    to a usual image folder beside the token file (``Flicker8k_Dataset``, ``Images``, ...).
    """
    token_file = Path(token_file)
    report = LoadReport(str(token_file))
    lists = find_split_lists(token_file.parent) if split_lists is None else {k: Path(v) for k, v in split_lists.items()}
    folder = (
        Path(images_dir)
        if images_dir is not None
        else first_existing((token_file.parent / n for n in IMAGE_FOLDERS), token_file.parent)
    )

    split_of: dict[str, str] = {}
    for split, list_file in lists.items():
        for number, line in iter_text_lines(list_file, report):
            name = line.strip()
            if not name:
                continue
            if name in split_of:
                report.add(
                    "duplicate",
                    f"{list_file.name}:{number}",
                    f"{name} is already in the {split_of[name]} list; kept there",
                )
                continue
            split_of[name] = split

    collector = Collector(token_file, "flickr", report)
    seen: dict[tuple[str, str], int] = {}
    not_in_split: set[str] = set()
    for number, line in iter_text_lines(token_file, report):
        where = f"{token_file.name}:{number}"
        if not line.strip():
            continue
        m = _TOKEN_LINE.match(line)
        if not m:
            report.add("malformed", where, "expected 'FILE#N<TAB>caption'")
            continue
        name, n = m.group("file").strip(), m.group("n")
        if (name, n) in seen:
            report.add("duplicate", where, f"{name}#{n} already on line {seen[(name, n)]}; this line ignored")
            continue
        seen[(name, n)] = number
        if lists:
            listed = split_of.get(name)
            if listed is None:
                if name not in not_in_split:
                    not_in_split.add(name)
                    report.add("not_in_split", where, f"{name} is in no split list; left out")
                continue
            split = listed
        else:
            split = default_split
        entry = collector.image(name, folder / name, split, name)
        collector.caption(entry, m.group("caption"), where)

    # listed images that never got a caption line still count as "images without captions"
    for name, split in split_of.items():
        collector.image(name, folder / name, split, name)
    return collector.build(folder, on_missing, check_files, progress)
