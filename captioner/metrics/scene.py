"""Scene accuracy: does a caption of a built-in scenes image say exactly what is in it?

A caption is right only if it names every kind of object in the image with the right
count, no other kind, and the right background colour; for example, for two dogs and
a car on green, "a green picture with a car and two dogs" is right and each of these is
wrong:

    two dogs on a green background                  missing kind (the car)
    two dogs, a car and a cat on a green background  extra kind
    three dogs and a car on a green background       wrong count
    two dog and a car on a green background          plural mismatch ("two dog")
    dogs and a car on a green background             no count ("dogs")
    a dog and a car and a dog on a green background  a kind named twice
    two dogs and a car on a red background           wrong background
    two dogs and a car                               no background
    two dogs and a car on a green and red background several backgrounds

Counts come from the word right before the noun: "a", "an", "one" -> 1, "two" .. "ten"
or digits. Articles are not graded ("a elephant" still counts one elephant). Words
that are neither a known kind nor a known colour are ignored, so a wrong caption can
only be caught through the kinds and colours the dataset has; the ground truth file
carries that catalogue (each kind's singular and plural, the background names), so
this module needs nothing from ``training``.

Ground truth (``scenes_<split>.json``, written by ``captioner data scenes``):

    {"format": "captioner-scenes-truth/1",
     "categories": [{"name": "dog", "plural": "dogs", "article": "a"}, ...],
     "backgrounds": ["white", "gray", ...],
     "images": [{"id": 1, "file_name": "test/000000.jpg", "background": "green",
                 "objects": [{"kind": "dog", "count": 2, "boxes": [...]}, ...]}, ...]}
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.vocab import tokenize

TRUTH_FORMAT = "captioner-scenes-truth/1"

NUMBER_WORDS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}

# Why a caption is wrong (a caption can be wrong in several ways at once).
REASONS = {
    "missing_kind": "a kind in the image is not named",
    "extra_kind": "names a kind that is not in the image",
    "wrong_count": "names a kind with the wrong count",
    "plural_mismatch": "singular with a count above one, or plural with one",
    "no_count": "names a kind without a number or article before it",
    "repeated_kind": "names the same kind twice",
    "missing_background": "names no background colour",
    "wrong_background": "names the wrong background colour",
    "several_backgrounds": "names more than one background colour",
}


@dataclass(frozen=True)
class SceneWords:
    """The words a caption can use for kinds and backgrounds, as token sequences."""

    kinds: dict[tuple[str, ...], tuple[str, str]]  # tokens -> (kind, "singular" | "plural" | "either")
    backgrounds: dict[tuple[str, ...], str]  # tokens -> background name
    longest: int

    @classmethod
    def from_catalogue(cls, categories: list[dict], backgrounds: list[str]) -> SceneWords:
        kinds: dict[tuple[str, ...], tuple[str, str]] = {}
        for c in categories:
            singular, plural = tuple(tokenize(c["name"])), tuple(tokenize(c["plural"]))
            if singular == plural:
                kinds[singular] = (c["name"], "either")
            else:
                kinds[singular] = (c["name"], "singular")
                kinds[plural] = (c["name"], "plural")
        colours = {tuple(tokenize(b)): b for b in backgrounds}
        clash = set(kinds) & set(colours)
        if clash:
            raise CaptionerError(f"scene words used both as a kind and a colour: {sorted(' '.join(c) for c in clash)}")
        longest = max(len(k) for k in [*kinds, *colours])
        return cls(kinds=kinds, backgrounds=colours, longest=longest)


@dataclass
class ParsedCaption:
    """What a caption claims: counts per kind (None: no count given) and background colours."""

    counts: dict[str, int | None] = field(default_factory=dict)
    backgrounds: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail) found while parsing


def parse_caption(caption: str, words: SceneWords) -> ParsedCaption:
    """Read kinds with their counts and the background colour(s) out of ``caption``."""
    tokens = tokenize(caption)
    parsed = ParsedCaption()
    i = 0
    while i < len(tokens):
        for n in range(min(words.longest, len(tokens) - i), 0, -1):  # longest phrase first
            phrase = tuple(tokens[i : i + n])
            if phrase in words.kinds:
                kind, form = words.kinds[phrase]
                before = tokens[i - 1] if i > 0 else ""
                count = NUMBER_WORDS.get(before) or (int(before) if before.isdigit() else None)
                if count is None:
                    parsed.problems.append(("no_count", f"'{' '.join(phrase)}' has no number before it"))
                elif (form == "singular" and count > 1) or (form == "plural" and count == 1):
                    parsed.problems.append(("plural_mismatch", f"'{before} {' '.join(phrase)}'"))
                if kind in parsed.counts:
                    parsed.problems.append(("repeated_kind", f"'{kind}' is named more than once"))
                else:
                    parsed.counts[kind] = count
                i += n
                break
            if phrase in words.backgrounds:
                parsed.backgrounds.append(words.backgrounds[phrase])
                i += n
                break
        else:
            i += 1
    return parsed


@dataclass
class SceneImage:
    """The ground truth of one image."""

    id: Hashable
    file_name: str
    background: str
    counts: dict[str, int]  # kind -> count


@dataclass
class SceneCheck:
    """The verdict on one caption: right, or the reasons (codes of REASONS) it is wrong."""

    correct: bool
    reasons: list[str]
    details: list[str]


def check_caption(caption: str, truth: SceneImage, words: SceneWords) -> SceneCheck:
    """Score one caption against one image's ground truth."""
    parsed = parse_caption(caption, words)
    problems = list(parsed.problems)
    for kind, count in truth.counts.items():
        if kind not in parsed.counts:
            problems.append(("missing_kind", f"no '{kind}'"))
        elif parsed.counts[kind] is not None and parsed.counts[kind] != count:
            problems.append(("wrong_count", f"{parsed.counts[kind]} '{kind}' instead of {count}"))
    for kind in parsed.counts:
        if kind not in truth.counts:
            problems.append(("extra_kind", f"'{kind}' is not in the image"))
    colours = list(dict.fromkeys(parsed.backgrounds))
    if not colours:
        problems.append(("missing_background", f"no background colour (it is {truth.background})"))
    elif len(colours) > 1:
        problems.append(("several_backgrounds", f"colours {', '.join(colours)}"))
    elif colours[0] != truth.background:
        problems.append(("wrong_background", f"{colours[0]} instead of {truth.background}"))
    reasons = list(dict.fromkeys(r for r, _ in problems))
    return SceneCheck(correct=not problems, reasons=reasons, details=[f"{r}: {d}" for r, d in problems])


class SceneTruth:
    """The ground truth of a split of a scenes dataset, looked up by image id or file name."""

    def __init__(self, data: dict, source: str = "<scene truth>") -> None:
        self.source = source
        if not isinstance(data, dict) or data.get("format") != TRUTH_FORMAT:
            raise CaptionerError(
                f'{source}: not a scenes ground-truth file (expected "format": "{TRUTH_FORMAT}"); '
                "it is the scenes_<split>.json that `captioner data scenes` writes"
            )
        try:
            self.words = SceneWords.from_catalogue(data["categories"], data["backgrounds"])
            self.images: dict[Hashable, SceneImage] = {}
            self._by_file: dict[str, SceneImage] = {}
            for img in data["images"]:
                image = SceneImage(
                    id=img["id"],
                    file_name=img["file_name"],
                    background=img["background"],
                    counts={o["kind"]: int(o["count"]) for o in img["objects"]},
                )
                self.images[image.id] = image
                self._by_file[image.file_name] = image
        except (KeyError, TypeError, ValueError) as e:
            raise CaptionerError(f"{source}: malformed scenes ground truth ({type(e).__name__}: {e})") from None
        self.split = data.get("split")

    @classmethod
    def load(cls, path: str | os.PathLike, split: str = "test") -> SceneTruth:
        """Load ``scenes_<split>.json``, given the file or the dataset folder."""
        path = Path(path)
        if path.is_dir():
            path = path / f"scenes_{split}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CaptionerError(
                f"{path}: no scenes ground truth here; scene accuracy needs a dataset made by `captioner data scenes`"
            ) from None
        except (OSError, ValueError) as e:
            raise CaptionerError(f"{path}: cannot read the scenes ground truth ({e})") from None
        return cls(data, str(path))

    def __len__(self) -> int:
        return len(self.images)

    def get(self, key: Hashable) -> SceneImage | None:
        """The image with this id (int or digit string) or file name (relative to images/, or its tail)."""
        if key in self.images:
            return self.images[key]
        if isinstance(key, str):
            if key.isdigit() and int(key) in self.images:
                return self.images[int(key)]
            if key in self._by_file:
                return self._by_file[key]
            tail = key.replace(os.sep, "/").split("/images/")[-1]
            return self._by_file.get(tail)
        return None


def find_scene_truth(dataset_dir: str | os.PathLike, split: str) -> Path | None:
    """``dataset_dir/scenes_<split>.json`` if ``dataset_dir`` is a scenes dataset, else None."""
    path = Path(dataset_dir) / f"scenes_{split}.json"
    return path if path.is_file() else None


@dataclass
class SceneAccuracy:
    """Scene accuracy over a set of captions, with how often each way of being wrong occurred."""

    accuracy: float  # fraction in [0, 1]
    correct: int
    total: int
    reasons: Counter  # reason code -> number of wrong captions showing it
    wrong: list[tuple[Hashable, str, list[str]]]  # (image key, caption, details), the first few

    def to_dict(self) -> dict:
        return {
            "scene_accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "errors": dict(self.reasons.most_common()),
        }


def scene_accuracy(predictions: Mapping[Hashable, str], truth: SceneTruth, keep_wrong: int = 20) -> SceneAccuracy:
    """Fraction of ``predictions`` (image id or file name -> caption) that are exactly right.

    Every key must be an image of ``truth``; raises :class:`CaptionerError` naming the
    first unknown keys otherwise.
    """
    unknown = [k for k in predictions if truth.get(k) is None]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        raise CaptionerError(
            f"{len(unknown)} captioned image(s) are not in {truth.source}: {shown}"
            f"{' ...' if len(unknown) > 5 else ''}; score a split against its own ground truth"
        )
    correct, reasons, wrong = 0, Counter[str](), list[tuple[Hashable, str, list[str]]]()
    for key, caption in predictions.items():
        image = truth.get(key)
        assert image is not None  # unknown keys were refused above
        check = check_caption(caption, image, truth.words)
        if check.correct:
            correct += 1
        else:
            reasons.update(check.reasons)
            if len(wrong) < keep_wrong:
                wrong.append((key, caption, check.details))
    total = len(predictions)
    return SceneAccuracy(
        accuracy=correct / total if total else 0.0, correct=correct, total=total, reasons=reasons, wrong=wrong
    )
