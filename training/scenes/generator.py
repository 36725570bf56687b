"""Sample and draw one scene: a few sprites of one to three kinds on a coloured background.

A scene is decided entirely by a ``random.Random`` the caller seeds (one per image, so
images can be made in any order and in parallel and still come out the same), then
drawn with Pillow from the committed sprites.

Layout: the image is cut into a 3 x 3 grid and every object gets a cell of its own,
anywhere inside it, at its own size. Objects therefore never overlap, stay whole inside
the image (there is no crop between this image and the encoder) and are always large
enough to recognise; at most ``max_kinds * max_count <= 9`` objects fit. Each sprite
gets a thin dark outline so that a lemon stays visible on a yellow background.

Sizes range over a factor of 1.4 in side (under 2 in area) so that one large object
never covers as much of the picture as two small ones: counts stay visible in a single
pooled CNN feature, which is all the captioning model sees.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFilter

from .catalogue import BACKGROUNDS, CATEGORIES, CATEGORY_BY_NAME, Background, Category

SPRITES_DIR = Path(__file__).resolve().parent / "sprites"


@dataclass(frozen=True)
class SceneConfig:
    """Everything that shapes a scene apart from the random draw."""

    image_size: int = 224  # px, square; the encoder's input size, so nothing is cropped
    grid: int = 3  # the image is a grid x grid board, one object per cell
    min_sprite: float = 0.225  # smallest sprite side, as a fraction of image_size (50 px at 224)
    max_sprite: float = 0.3125  # largest (70 px at 224); must fit a cell with the margin
    cell_margin: int = 2  # px kept free on each side inside a cell, so sprites never touch
    max_kinds: int = 2  # kinds of object per image: 1..max_kinds
    kind_weights: tuple[float, ...] = (0.35, 0.65)  # probability of 1, 2, ... kinds
    max_count: int = 3  # objects of one kind: 1..max_count
    outline: int = 2  # px of dark outline around each sprite (0: none)
    outline_rgb: tuple[int, int, int] = (34, 34, 34)
    background_jitter: int = 14  # each RGB channel moves by up to this much around the named colour

    def __post_init__(self) -> None:
        if len(self.kind_weights) != self.max_kinds:
            raise ValueError(f"kind_weights needs one weight per number of kinds (1..{self.max_kinds})")
        if self.max_kinds * self.max_count > self.grid * self.grid:
            raise ValueError(
                f"{self.max_kinds} kinds x {self.max_count} objects do not fit a {self.grid}x{self.grid} grid"
            )
        if self.sprite_range[1] + 2 * self.cell_margin > self.image_size // self.grid:
            raise ValueError("max_sprite is too large for a grid cell")

    @property
    def sprite_range(self) -> tuple[int, int]:
        """(smallest, largest) sprite side in pixels."""
        return round(self.min_sprite * self.image_size), round(self.max_sprite * self.image_size)


@dataclass
class SceneObject:
    """All the objects of one kind in a scene, with their boxes (x0, y0, x1, y1) in pixels."""

    kind: str
    count: int
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    flips: list[bool] = field(default_factory=list)

    @property
    def category(self) -> Category:
        return CATEGORY_BY_NAME[self.kind]


@dataclass
class Scene:
    """What one image shows; the captions and the ground truth are written from this."""

    background: str  # a name from catalogue.BACKGROUNDS
    background_rgb: tuple[int, int, int]  # the jittered colour actually painted
    objects: list[SceneObject]

    def truth(self) -> dict:
        """The ground-truth record saved with the dataset (what the metric compares against)."""
        return {
            "background": self.background,
            "objects": [{"kind": o.kind, "count": o.count, "boxes": [list(b) for b in o.boxes]} for o in self.objects],
        }


def sample_scene(
    rng: random.Random,
    config: SceneConfig = SceneConfig(),
    categories: Sequence[Category] = CATEGORIES,
    backgrounds: Sequence[Background] = BACKGROUNDS,
) -> Scene:
    """Draw kinds, counts, background, sizes and positions from ``rng``."""
    n_kinds = rng.choices(range(1, config.max_kinds + 1), weights=config.kind_weights)[0]
    n_kinds = min(n_kinds, len(categories))
    kinds = rng.sample(list(categories), n_kinds)
    counts = [rng.randint(1, config.max_count) for _ in kinds]
    background = rng.choice(list(backgrounds))
    j = config.background_jitter
    r, g, b = (min(255, max(0, c + rng.randint(-j, j))) for c in background.rgb)

    n = config.image_size
    edges = [round(i * n / config.grid) for i in range(config.grid + 1)]  # cell borders, px
    cells = rng.sample(range(config.grid * config.grid), sum(counts))
    lo, hi = config.sprite_range
    m = config.cell_margin
    objects, k = [], 0
    for category, count in zip(kinds, counts):
        obj = SceneObject(kind=category.name, count=count)
        for _ in range(count):
            row, col = divmod(cells[k], config.grid)
            k += 1
            x0, x1, y0, y1 = edges[col], edges[col + 1], edges[row], edges[row + 1]
            size = rng.randint(lo, min(hi, x1 - x0 - 2 * m, y1 - y0 - 2 * m))
            x = rng.randint(x0 + m, x1 - m - size)
            y = rng.randint(y0 + m, y1 - m - size)
            obj.boxes.append((x, y, x + size, y + size))
            obj.flips.append(rng.random() < 0.5)
        objects.append(obj)
    return Scene(background=background.name, background_rgb=(r, g, b), objects=objects)


@functools.cache
def _sprite(name: str) -> Image.Image:
    """The committed 96 px RGBA sprite of a category (loaded once per process)."""
    path = SPRITES_DIR / CATEGORY_BY_NAME[name].sprite_file
    with Image.open(path) as im:
        return im.convert("RGBA")


@functools.lru_cache(maxsize=4096)
def styled_sprite(name: str, size: int, flip: bool, outline: int, outline_rgb: tuple[int, int, int]) -> Image.Image:
    """The sprite of ``name`` as drawn: ``size`` px square, mirrored if ``flip``, outlined.

    Cached, so a whole dataset resizes each (kind, size, flip) only once.
    """
    inner = size - 2 * outline
    sprite = _sprite(name).resize((inner, inner), Image.Resampling.LANCZOS)
    if flip:
        sprite = sprite.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    out.paste(sprite, (outline, outline))
    if outline > 0:
        ring = out.getchannel("A").point(lambda a: 255 if a > 40 else 0).filter(ImageFilter.MaxFilter(2 * outline + 1))
        base = Image.new("RGBA", (size, size), (*outline_rgb, 0))
        base.putalpha(ring)
        out = Image.alpha_composite(base, out)
    return out


def render_scene(scene: Scene, config: SceneConfig = SceneConfig()) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``config.image_size`` pixels square."""
    image = Image.new("RGB", (config.image_size, config.image_size), scene.background_rgb)
    for obj in scene.objects:
        for (x0, y0, x1, _), flip in zip(obj.boxes, obj.flips):
            sprite = styled_sprite(obj.kind, x1 - x0, flip, config.outline, config.outline_rgb)
            image.paste(sprite, (x0, y0), sprite)
    return image
