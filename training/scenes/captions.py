"""Reference captions for a scene: several natural phrasings, all exactly true.

Every caption names each kind once with its count ("a", "an", "one", "two", "three"),
the right singular or plural, and the background colour, e.g.

    two dogs and a car on a green background
    a green picture with a car and two dogs
    there are two dogs and one car in front of a green background

The phrasings differ in template, in the order the kinds are listed and in "a" versus
"one", which gives the vocabulary and the decoder some real language to learn while
keeping every caption checkable by the scene-accuracy metric.
"""

from __future__ import annotations

import random

from .catalogue import BACKGROUND_BY_NAME, CATEGORY_BY_NAME
from .generator import Scene

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}

# {objects}: "two dogs and a car"; {bg}: "green"; {a_bg}: "a"/"an" for the colour; {be}: "is"/"are".
TEMPLATES: tuple[str, ...] = (
    "{objects} on {a_bg} {bg} background",
    "{a_bg} {bg} picture with {objects}",
    "{objects} in front of {a_bg} {bg} background",
    "there {be} {objects} on {a_bg} {bg} background",
    "{a_bg} {bg} background with {objects}",
    "a picture of {objects} on {a_bg} {bg} background",
    "an image of {objects} against {a_bg} {bg} background",
    "a drawing of {objects} on {a_bg} {bg} background",
)

ONE_INSTEAD_OF_ARTICLE = 0.15  # how often a single object is "one dog" rather than "a dog"


def noun_phrase(kind: str, count: int, rng: random.Random) -> str:
    """'a dog', 'an apple', 'one dog', 'two dogs', 'three sheep'."""
    category = CATEGORY_BY_NAME[kind]
    if count == 1:
        det = "one" if rng.random() < ONE_INSTEAD_OF_ARTICLE else category.article
        return f"{det} {category.name}"
    return f"{NUMBER_WORDS[count]} {category.plural}"


def join_phrases(phrases: list[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    if len(phrases) <= 2:
        return " and ".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe_scene(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """``n`` captions of ``scene``, each from a different template (n <= len(TEMPLATES))."""
    if not 1 <= n <= len(TEMPLATES):
        raise ValueError(f"between 1 and {len(TEMPLATES)} captions per image, not {n}")
    background = BACKGROUND_BY_NAME[scene.background]
    captions = []
    for template in rng.sample(TEMPLATES, n):
        objects = list(scene.objects)
        rng.shuffle(objects)
        phrases = [noun_phrase(o.kind, o.count, rng) for o in objects]
        captions.append(
            template.format(
                objects=join_phrases(phrases),
                bg=background.name,
                a_bg=background.article,
                be="is" if objects[0].count == 1 else "are",
            )
        )
    return captions
