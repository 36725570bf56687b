"""Predictions from any system, and how each is paired with a reference image.

:func:`load_predictions` reads the COCO results format (``[{"image_id": 42, "caption":
"..."}]``), our JSONL (``{"file": "dog.jpg", "caption": "..."}`` per line, as ``captioner
caption DIR --out`` writes it) or our CSV. :func:`match_predictions` pairs a prediction
with a reference image by its id (COCO id, Karpathy id, Flickr file name), else by the
longest unambiguous tail of its file path, so predictions made from the image folder
match whatever folder the references name. A bare file name that several folders share
(``000001.jpg`` in ``images/train`` and ``images/test``) is settled by the folder that
holds the predictions' other files: :func:`match_predictions` picks the one folder where
all of them are (the fullest one on a tie) and says so; :func:`no_match_message`
explains, with an example of each side, what to pass when nothing matches.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from captioner.errors import CaptionerError

from .datasets import CaptionDataset, CaptionedImage

SHOWN = 5  # unmatched / failed examples named in messages


@dataclass
class Prediction:
    """One predicted caption: ``key`` is an image id (int or str) or a file path."""

    key: Hashable
    caption: str
    where: str  # "results.json: [3]", "captions.jsonl:12"


ID_KEYS = ("image_id", "id")
FILE_KEYS = ("file", "image", "file_name", "filename", "image_path", "path")
CAPTION_KEYS = ("caption", "text", "sentence")


def _prediction_from(row: object, where: str) -> Prediction:
    if not isinstance(row, dict):
        raise CaptionerError(f"{where}: expected an object with an image id or file and a caption")
    key = next((row[k] for k in (*ID_KEYS, *FILE_KEYS) if k in row), None)
    if isinstance(key, bool) or not isinstance(key, (int, str)) or (isinstance(key, str) and not key.strip()):
        raise CaptionerError(f"{where}: needs an image id (image_id) or a file name (file) as a number or string")
    caption = next((row[k] for k in CAPTION_KEYS if k in row), None)
    if not isinstance(caption, str):
        raise CaptionerError(f"{where}: needs a caption string under one of {list(CAPTION_KEYS)}")
    return Prediction(key, caption, where)


def load_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Read predicted captions from a COCO results JSON, a JSONL file or a CSV file.

    * ``.json``: a list of ``{"image_id", "caption"}`` objects (COCO results format), or
      one object mapping image id / file -> caption;
    * ``.csv``: a header naming a file or id column and a caption column
      (``file,caption,score`` as folder captioning writes it);
    * anything else: JSON Lines, one object per line (``{"file", "caption"}`` or
      ``{"image_id", "caption"}``).

    Raises :class:`CaptionerError` naming the file and the entry or line that is wrong.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaptionerError(f"{path}: predictions file not found") from None
    except OSError as e:
        raise CaptionerError(f"{path}: cannot read the predictions ({e.strerror or e})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = data[: e.start].count(b"\n") + 1
        raise CaptionerError(f"{path}:{bad_line}: not valid UTF-8; save the predictions as UTF-8") from None
    suffix = path.suffix.lower()
    preds: list[Prediction] = []
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise CaptionerError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
        if isinstance(obj, list):
            preds = [_prediction_from(row, f"{path.name}: [{i}]") for i, row in enumerate(obj)]
        elif isinstance(obj, dict) and all(isinstance(v, str) for v in obj.values()):
            preds = [Prediction(int(k) if k.isdigit() else k, v, f"{path.name}: {k!r}") for k, v in obj.items()]
        else:
            raise CaptionerError(
                f'{path}: expected the COCO results format, a list of {{"image_id": ..., "caption": ...}} objects'
            )
    elif suffix in (".csv", ".tsv"):
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
        if not rows:
            raise CaptionerError(f"{path}: the file is empty")
        header = [h.strip().lower() for h in rows[0]]
        key_col = next((header.index(k) for k in (*ID_KEYS, *FILE_KEYS) if k in header), None)
        cap_col = next((header.index(k) for k in CAPTION_KEYS if k in header), None)
        if key_col is None or cap_col is None:
            raise CaptionerError(
                f"{path}: the first line must be a header naming a file or image_id column "
                f"and a caption column (e.g. file,caption,score), got {rows[0]}"
            )
        for n, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) <= max(key_col, cap_col):
                raise CaptionerError(f"{path}:{n}: expected {len(header)} fields, got {len(row)}")
            key: Hashable = row[key_col]
            if header[key_col] in ID_KEYS and row[key_col].isdigit():
                key = int(row[key_col])
            preds.append(Prediction(key, row[cap_col], f"{path.name}:{n}"))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CaptionerError(
                    f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); expected one "
                    'object per line such as {"file": "dog.jpg", "caption": "a dog"}'
                ) from None
            preds.append(_prediction_from(row, f"{path.name}:{n}"))
    if not preds:
        raise CaptionerError(f"{path}: no predictions in the file")
    return preds


def _path_tails(path: str) -> list[str]:
    """``"a/b/c.jpg"`` -> ``["a/b/c.jpg", "b/c.jpg", "c.jpg"]`` (longest first)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return ["/".join(parts[i:]) for i in range(len(parts))]


@dataclass
class Matched:
    """Predictions paired with reference images, and what could not be paired."""

    pairs: list[tuple[CaptionedImage, str]]  # in reference order
    unmatched: list[Prediction] = field(default_factory=list)  # no reference image found
    ambiguous: list[Prediction] = field(default_factory=list)  # a file tail shared by several images
    duplicates: list[Prediction] = field(default_factory=list)  # a second caption for one image
    without_prediction: int = 0  # reference images with no caption
    folder: str | None = None  # the folder that settled shared file names, when one did
    settled: int = 0  # predictions whose shared file name that folder settled


class _TailIndex:
    """Every tail of every reference image's absolute path -> the images it names."""

    def __init__(self, dataset: CaptionDataset) -> None:
        self.paths = [_path_tails(os.path.abspath(item.image_path))[0] for item in dataset.items]  # no leading /
        self.images: dict[str, list[int]] = {}
        for i, path in enumerate(self.paths):
            for tail in _path_tails(path):
                self.images.setdefault(tail, []).append(i)

    def lookup(self, key: str) -> tuple[str, list[int]] | None:
        """The longest tail of ``key`` naming any image, and the images it names."""
        for tail in _path_tails(key):
            if tail in self.images:
                return tail, self.images[tail]
        return None

    def root(self, index: int, tail: str) -> str:
        """The folder image ``index`` is in, seen from ``tail`` (its path minus the tail)."""
        return "/" + self.paths[index][: -len(tail)].rstrip("/")


def _settle_folder(found: dict[int, tuple[str, list[int]]], index: _TailIndex) -> str | None:
    """The folder that holds every file-named prediction (the one with fewest images on a tie)."""
    holders: Counter = Counter()
    for tail, images in found.values():
        holders.update({index.root(i, tail) for i in images})
    if not holders:
        return None
    everywhere = [root for root, n in holders.items() if n == len(found)]
    if not everywhere:
        return None
    size = Counter(root for root in everywhere for path in index.paths if ("/" + path).startswith(root + "/"))
    best = min(everywhere, key=lambda root: size[root])
    if sum(1 for root in everywhere if size[root] == size[best]) > 1:
        return None
    return best


def match_predictions(predictions: Sequence[Prediction], dataset: CaptionDataset) -> Matched:
    """Pair each prediction with its reference image (see the module docstring).

    Ids match first (a digit string matches an integer id); then file paths by their
    longest tail (``test/000001.jpg``, then ``000001.jpg``) that names exactly one image.
    A tail that names several images is settled by the one folder that holds every
    file-named prediction (:attr:`Matched.folder`), else the prediction is ambiguous.
    The first caption of an image wins; later ones are listed as duplicates.
    """
    by_id: dict[Hashable, int] = {}
    for i, item in enumerate(dataset.items):
        by_id.setdefault(item.image_id, i)
        by_id.setdefault(str(item.image_id), i)
    tails = _TailIndex(dataset)
    out = Matched(pairs=[])
    resolved: dict[int, int] = {}  # position in predictions -> image index
    found: dict[int, tuple[str, list[int]]] = {}  # position -> (tail, images) for file-named ones
    for n, p in enumerate(predictions):
        index = by_id.get(p.key)
        if index is None and isinstance(p.key, str) and p.key.isdigit():
            index = by_id.get(int(p.key))
        if index is not None:
            resolved[n] = index
        elif isinstance(p.key, str) and (hit := tails.lookup(p.key)) is not None:
            found[n] = hit
            if len(hit[1]) == 1:
                resolved[n] = hit[1][0]
    if any(n not in resolved for n in found):
        out.folder = _settle_folder(found, tails)
    for n, (tail, images) in found.items():
        if n in resolved:
            continue
        in_folder = [i for i in images if out.folder is not None and tails.root(i, tail) == out.folder]
        if len(in_folder) == 1:
            resolved[n] = in_folder[0]
            out.settled += 1
    chosen: dict[int, str] = {}
    for n, p in enumerate(predictions):
        if n not in resolved:
            (out.ambiguous if n in found else out.unmatched).append(p)
        elif resolved[n] in chosen:
            out.duplicates.append(p)
        else:
            chosen[resolved[n]] = p.caption
    out.pairs = [(dataset.items[i], chosen[i]) for i in sorted(chosen)]
    out.without_prediction = len(dataset.items) - len(chosen)
    if not out.settled:
        out.folder = None
    return out


def _examples(preds: Sequence[Prediction]) -> str:
    shown = ", ".join(f"{p.where} ({p.key!r})" for p in preds[:SHOWN])
    return shown + (f" and {len(preds) - SHOWN} more" if len(preds) > SHOWN else "")


def image_root(dataset: CaptionDataset) -> Path:
    return dataset.images_dir if dataset.images_dir is not None else Path(dataset.source).parent


def no_match_message(predictions: Sequence[Prediction], matched: Matched, dataset: CaptionDataset) -> str:
    """Why nothing matched: one prediction, one reference image, and what to pass."""
    p = (matched.ambiguous or matched.unmatched or list(predictions))[0]
    root = image_root(dataset)
    item = dataset.items[0] if dataset.items else None
    ref = "the references hold no images"
    if item is not None:
        try:
            rel = Path(os.path.relpath(item.image_path, root)).as_posix()
        except ValueError:
            rel = Path(item.image_path).as_posix()
        ref = f"a reference image is {rel!r} (image_id {item.image_id!r}) under {root}"
    msg = (
        f"no prediction matched a reference image ({len(predictions)} prediction(s) match no reference image): "
        f"e.g. {p.where} names {p.key!r}; {ref}. "
    )
    if matched.ambiguous:
        splits = ", ".join(dataset.splits) if dataset.splits else "the split"
        return msg + (
            f"{len(matched.ambiguous)} prediction(s) name files that several folders share: pass --split "
            f"(one of {splits}) to say which images the captions are for, or give paths relative to {root}"
        )
    return msg + (
        f"Name each prediction by its image_id, or by its file path relative to {root}, "
        "and check that predictions and references describe the same images (and the --split)"
    )
