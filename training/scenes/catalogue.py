"""What a scene can contain: the object categories and the background colours.

Each category is one sprite (a Noto Color Emoji glyph rendered once into
``sprites/<file>.png``, see ``make_sprites.py``) plus the words a caption uses for it:
the singular, the plural and the indefinite article. Irregular plurals ("sheep",
"fish", "buses") are written out here once so that neither the caption writer nor the
scene-accuracy metric has to guess them.

The categories were chosen to be easy to tell apart at 50-70 pixels (no two similar
side-view mammals, no pair of round red fruits) and none of their names is a colour
word, so "orange" in a caption can only ever mean the background.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """One kind of object: its words and the emoji its sprite was rendered from."""

    name: str  # singular, as in captions: "dog"
    plural: str  # "dogs"; may equal ``name`` ("sheep")
    article: str  # "a" or "an"
    codepoint: str  # hex code point of the emoji, e.g. "1F415"
    group: str  # "animal" | "vehicle" | "food" | "household"

    @property
    def sprite_file(self) -> str:
        """File name of the sprite under ``training/scenes/sprites/``."""
        return self.name.replace(" ", "_") + ".png"

    @property
    def emoji(self) -> str:
        return chr(int(self.codepoint, 16))

    def to_dict(self) -> dict[str, str]:
        """The words the scene-accuracy metric needs (saved with every ground truth)."""
        return {"name": self.name, "plural": self.plural, "article": self.article}


def _c(name: str, plural: str, codepoint: str, group: str, article: str = "a") -> Category:
    return Category(name=name, plural=plural, article=article, codepoint=codepoint, group=group)


CATEGORIES: tuple[Category, ...] = (
    # animals
    _c("dog", "dogs", "1F415", "animal"),
    _c("cat", "cats", "1F408", "animal"),
    _c("horse", "horses", "1F40E", "animal"),
    _c("cow", "cows", "1F404", "animal"),
    _c("pig", "pigs", "1F416", "animal"),
    _c("sheep", "sheep", "1F411", "animal"),
    _c("elephant", "elephants", "1F418", "animal", "an"),
    _c("bird", "birds", "1F426", "animal"),
    _c("fish", "fish", "1F41F", "animal"),
    _c("turtle", "turtles", "1F422", "animal"),
    _c("butterfly", "butterflies", "1F98B", "animal"),
    _c("penguin", "penguins", "1F427", "animal"),
    # vehicles
    _c("car", "cars", "1F697", "vehicle"),
    _c("bus", "buses", "1F68C", "vehicle"),
    _c("bicycle", "bicycles", "1F6B2", "vehicle"),
    _c("motorcycle", "motorcycles", "1F3CD", "vehicle"),
    _c("truck", "trucks", "1F69A", "vehicle"),
    _c("train", "trains", "1F682", "vehicle"),
    _c("airplane", "airplanes", "2708", "vehicle", "an"),
    _c("boat", "boats", "26F5", "vehicle"),
    # food
    _c("apple", "apples", "1F34E", "food", "an"),
    _c("banana", "bananas", "1F34C", "food"),
    _c("pizza", "pizzas", "1F355", "food"),
    _c("cake", "cakes", "1F382", "food"),
    _c("carrot", "carrots", "1F955", "food"),
    _c("strawberry", "strawberries", "1F353", "food"),
    _c("lemon", "lemons", "1F34B", "food"),
    _c("doughnut", "doughnuts", "1F369", "food"),
    _c("hamburger", "hamburgers", "1F354", "food"),
    _c("pineapple", "pineapples", "1F34D", "food"),
    # household things
    _c("chair", "chairs", "1FA91", "household"),
    _c("clock", "clocks", "23F0", "household"),
    _c("umbrella", "umbrellas", "2602", "household", "an"),
    _c("key", "keys", "1F511", "household"),
    _c("book", "books", "1F4D5", "household"),
    _c("cup", "cups", "2615", "household"),
    _c("television", "televisions", "1F4FA", "household"),
    _c("laptop", "laptops", "1F4BB", "household"),
    _c("ball", "balls", "26BD", "household"),
    _c("guitar", "guitars", "1F3B8", "household"),
)

CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}


@dataclass(frozen=True)
class Background:
    """A named background colour; images jitter the RGB a little around ``rgb``."""

    name: str
    rgb: tuple[int, int, int]

    @property
    def article(self) -> str:
        return "an" if self.name[0] in "aeiou" else "a"


# Ten colours far apart in RGB and in hue, so the name is never in doubt.
BACKGROUNDS: tuple[Background, ...] = (
    Background("white", (242, 242, 242)),
    Background("gray", (128, 128, 128)),
    Background("black", (22, 22, 22)),
    Background("red", (206, 32, 32)),
    Background("orange", (244, 140, 20)),
    Background("yellow", (246, 226, 40)),
    Background("green", (40, 160, 60)),
    Background("blue", (36, 84, 214)),
    Background("purple", (124, 50, 168)),
    Background("pink", (246, 150, 200)),
)

BACKGROUND_BY_NAME: dict[str, Background] = {b.name: b for b in BACKGROUNDS}

assert not set(CATEGORY_BY_NAME) & set(BACKGROUND_BY_NAME), "a category name must not be a colour word"
