"""Attention maps per word: where an attention model looked for each word of its caption.

:func:`explain` captions images through the one image path and gives, per word (and for
``<end>``), the attention weights over the encoder's h x w grid at the step that chose the
word (:meth:`captioner.attention.AttentionDecoder.attention`). :func:`render_figure` draws
the classic figure: the image the model saw, then one tile per word with that step's map
upsampled and laid over the image (bright where the model looked), the word under its
tile, the caption and its confidence in the title.

:func:`localisation` measures on a scenes split whether the attention of each object word
peaks in a cell of the scene's grid where an object of that kind was drawn.

The maps need an attention model; for a pooled decoder :func:`explain` raises
:class:`~captioner.errors.CaptionerError` saying so (the hidden-unit analysis,
:mod:`captioner.units`, works for every decoder).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import CaptionerError
from .images import ImageSource
from .vocab import tokenize

if TYPE_CHECKING:
    from .runtime.captioner import CaptionerBase as Captioner
    from .runtime.results import CaptionResult

NEEDS_ATTENTION = (
    "attention maps need an attention model (decoder kind 'attention', `captioner train --decoder attention`); "
    "this checkpoint's decoder is pooled. `captioner units` explains any decoder through its hidden units."
)
TILE = 160  # px per tile in the figure
COLUMNS = 6  # tiles per row
FLOOR = 0.2  # brightness where the model did not look at all


@dataclass
class Explanation:
    """One image's caption with the attention map of each of its words and of ``<end>``."""

    caption: str
    words: list[str]  # the caption's words, then "<end>"
    maps: np.ndarray  # (len(words), h, w): each a distribution over the grid
    confidence: float | None
    score: float
    image: Image.Image  # the pixels the model saw (the preprocessed crop, un-normalised)

    def peaks(self) -> list[tuple[int, int]]:
        """The (row, column) of each word's largest weight."""
        w = self.maps.shape[2]
        flat = self.maps.reshape(len(self.words), -1).argmax(axis=1)  # (T,)
        return [(int(i) // w, int(i) % w) for i in flat]

    def to_dict(self, digits: int = 3) -> dict:
        return {
            "caption": self.caption,
            "confidence": self.confidence,
            "words": [
                {"word": word, "attention": np.round(m, digits).tolist(), "peak": list(p)}
                for word, m, p in zip(self.words, self.maps, self.peaks())
            ],
        }


def grid_shape(locations: int) -> tuple[int, int]:
    """(h, w) of a square encoder grid with ``locations`` cells."""
    side = math.isqrt(locations)
    if side * side != locations:
        raise CaptionerError(f"the encoder's {locations} locations are not a square grid")
    return side, side


def seen_image(model: Captioner, pixels: np.ndarray) -> Image.Image:
    """The preprocessed input (3, S, S) back as an RGB image: the pixels the model saw."""
    seen = model.preprocessing.denormalize(pixels)  # (3, S, S) in [0, 1]
    return Image.fromarray((seen * 255).round().astype(np.uint8).transpose(1, 2, 0), "RGB")


def require_attention(model: Captioner) -> None:
    if not model.attends:
        raise CaptionerError(NEEDS_ATTENTION)


def explain(model: Captioner, images: Sequence[ImageSource], beam_size: int = 1) -> list[Explanation]:
    """Captions and per-word attention maps of images (paths, bytes, PIL images or arrays):
    the weights the search recorded while it generated each word."""
    from . import pipeline
    from .options import CaptionOptions

    require_attention(model)
    inputs = [model.preprocess(im) for im in images]
    started = pipeline.start_batch(model, inputs)  # maps (B, N, C) and the decoder's start
    results = model.generate(started, CaptionOptions(beam_size=beam_size), attention=True)
    v = model.vocab
    h, w = grid_shape(started.features.shape[1])
    out = []
    for r, x in zip(results, inputs):
        words = [v.itos[i] for i in r.tokens] + [v.END]
        maps = np.asarray(r.attention, dtype=np.float32).reshape(len(words), h, w)  # (T, h, w)
        out.append(Explanation(r.caption, words, maps, r.confidence, r.score, seen_image(model, x)))
    return out


def word_maps(model: Captioner, results: Sequence[CaptionResult], digits: int = 3) -> list[list[dict]]:
    """For the API: per caption (generated with ``attention=True``), per word and ``<end>``:
    ``{"word", "attention": h x w weights rounded to digits, "peak": [row, column]}``."""
    require_attention(model)
    v = model.vocab
    out = []
    for r in results:
        if r.attention is None:
            raise CaptionerError("word_maps needs captions generated with attention=True")
        h, w = grid_shape(r.attention.shape[1])
        maps = np.asarray(r.attention).reshape(len(r.tokens) + 1, h, w)  # (T, h, w)
        words = [v.itos[i] for i in r.tokens] + [v.END]
        out.append(
            [
                {"word": word, "attention": np.round(m, digits).tolist(), "peak": list(divmod(int(m.argmax()), w))}
                for word, m in zip(words, maps)
            ]
        )
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def overlay(image: Image.Image, attention: np.ndarray, size: int = TILE) -> Image.Image:
    """``image`` at ``size`` px, bright where ``attention`` (h, w) is high, dark elsewhere
    (the map upsampled bicubically and scaled to its maximum)."""
    base = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    m = Image.fromarray(attention.astype(np.float32), "F").resize((size, size), Image.Resampling.BICUBIC)
    mask = np.clip(np.asarray(m), 0, None)  # (size, size)
    mask = mask / mask.max() if mask.max() > 0 else mask
    lit = base * (FLOOR + (1 - FLOOR) * mask[:, :, None])  # (size, size, 3)
    return Image.fromarray(lit.clip(0, 255).astype(np.uint8), "RGB")


def render_figure(ex: Explanation, tile: int = TILE, columns: int = COLUMNS) -> Image.Image:
    """The classic figure: the image, then one tile per word (its attention overlaid)."""
    title_h, label_h, pad = 34, 24, 6
    n = 1 + len(ex.words)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = Image.new("RGB", (cols * (tile + pad) + pad, title_h + rows * (tile + label_h + pad)), "white")
    draw = ImageDraw.Draw(fig)
    conf = "n/a" if ex.confidence is None else f"{ex.confidence:.2f}"
    draw.text((pad, 8), f"{ex.caption or '(no caption)'}   confidence {conf}", fill="black", font=_font(16))
    tiles = [(ex.image.resize((tile, tile), Image.Resampling.BICUBIC), "image")]
    tiles += [(overlay(ex.image, m, tile), word) for word, m in zip(ex.words, ex.maps)]
    label_font = _font(15)
    for k, (im, label) in enumerate(tiles):
        x = pad + (k % cols) * (tile + pad)
        y = title_h + (k // cols) * (tile + label_h + pad)
        fig.paste(im, (x, y))
        width = draw.textlength(label, font=label_font)
        draw.text((x + (tile - width) / 2, y + tile + 3), label, fill="black", font=label_font)
    return fig


def write_figures(model: Captioner, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """One PNG per image in ``out_dir`` (named after the image) and explain.json with the maps."""
    from .fsio import atomic_write_path, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, record = [], {}
    for path, ex in zip(images, explain(model, images)):
        target = out / (Path(path).stem + ".png")
        figure = render_figure(ex)
        atomic_write_path(target, lambda tmp: figure.save(tmp, format="PNG"))  # noqa: B023 (called at once)
        written.append(target)
        record[str(path)] = ex.to_dict()
    atomic_write_text(out / "explain.json", json.dumps(record, indent=1) + "\n")
    return written


# ---------------------------------------------------------------------- localisation on scenes
@dataclass
class Localisation:
    """How often an object word's attention peaks in a scene cell holding that object."""

    hits: int
    words: int
    images: int
    chance: float = 0.0  # expected fraction for a peak drawn uniformly over the board (cells of the kind / all)

    @property
    def fraction(self) -> float:
        return self.hits / self.words if self.words else 0.0


def scene_cells(boxes: Sequence[Sequence[int]], image_size: int, grid: int) -> set[tuple[int, int]]:
    """The (row, column) cells of the scene's grid x grid board that hold these boxes' centres."""
    cell = image_size / grid
    return {(int(((y0 + y1) / 2) // cell), int(((x0 + x1) / 2) // cell)) for x0, y0, x1, y1 in boxes}


def peak_cell(attention: np.ndarray, image_size: int, grid: int) -> tuple[int, int]:
    """The scene cell (row, column) under the centre of the attention map's (h, w) largest cell
    (the encoder's grid spans the whole image: scenes are square and not cropped)."""
    h, w = attention.shape
    r, c = divmod(int(attention.argmax()), w)
    y, x = (r + 0.5) * image_size / h, (c + 0.5) * image_size / w
    cell = image_size / grid
    return int(y // cell), int(x // cell)


def object_words(categories: Sequence[dict]) -> dict[str, str]:
    """Every word of a kind's singular or plural name -> the kind."""
    return {t: c["name"] for c in categories for form in ("name", "plural") for t in tokenize(c[form])}


def localisation(model: Captioner, data_dir: str | os.PathLike, split: str = "val", images: int = 100) -> Localisation:
    """Over the first ``images`` images of a scenes split: for every word of the caption that
    names a kind drawn in the image, whether its attention peaks in a cell holding that kind."""
    root = Path(data_dir)
    try:
        truth = json.loads((root / f"scenes_{split}.json").read_text(encoding="utf-8"))
        config = json.loads((root / "dataset.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError) as e:
        raise CaptionerError(f"{root}: not a scenes dataset with ground truth ({e})") from None
    size, grid = int(config["image_size"]), int(config["grid"])
    words = object_words(truth["categories"])
    hits = total = 0
    chance = 0.0
    batch = truth["images"][:images]
    for lo in range(0, len(batch), 16):
        chunk = batch[lo : lo + 16]
        for img, ex in zip(chunk, explain(model, [root / "images" / i["file_name"] for i in chunk])):
            cells = {o["kind"]: scene_cells(o["boxes"], size, grid) for o in img["objects"]}
            for word, m in zip(ex.words, ex.maps):
                kind = words.get(word)
                if kind in cells:
                    total += 1
                    hits += peak_cell(m, size, grid) in cells[kind]
                    chance += len(cells[kind]) / grid**2
    return Localisation(hits, total, len(batch), chance / total if total else 0.0)
