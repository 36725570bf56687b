"""The allowed range of every numeric captioning option, in one place.

The command line (``argparse`` type functions) and the HTTP API (422 errors) both read these
ranges, so ``--beam-size 0`` and ``?beam_size=0`` are refused with the same words. This module
imports nothing heavy (no torch), so argument errors stay fast.

Use :meth:`Range.argparse` as an ``argparse`` ``type=``, :meth:`Range.check` anywhere else::

    p.add_argument("--beam-size", type=BEAM_SIZE.argparse, default=1)
    BEAM_SIZE.check(value)        # -> value, or OptionError("beam size must be an integer from 1 to 20, got 0")
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from .errors import CaptionerError

__all__ = [
    "BATCH_SIZE",
    "BEAM_SIZE",
    "DEFAULT_LABELS",
    "DEFAULT_MIN_WORD_PROB",
    "LABELS",
    "LENGTH_PENALTY",
    "MAX_LENGTH",
    "MIN_WORD_PROB",
    "NO_REPEAT_NGRAM",
    "RANGES",
    "TEMPERATURE",
    "WORKERS",
    "CaptionOptions",
    "OptionError",
    "Range",
]


class OptionError(CaptionerError, ValueError):
    """An option value outside its allowed range; the message names the range."""


@dataclass(frozen=True)
class Range:
    """A closed numeric range ``low..high`` for one option; ``integer`` options refuse fractions."""

    name: str  # words used in messages, e.g. "beam size"
    low: float
    high: float
    integer: bool = True
    low_open: bool = False  # True: the value must be strictly greater than ``low``

    def describe(self) -> str:
        """The allowed range in words, e.g. ``an integer from 1 to 20``."""
        if self.integer:
            return f"an integer from {int(self.low)} to {int(self.high)}"
        low = f"greater than {self.low:g}" if self.low_open else f"from {self.low:g}"
        return f"a number {low} to {self.high:g}"

    def message(self) -> str:
        """One line naming the allowed range."""
        return f"{self.name} must be {self.describe()}"

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.integer and not float(value).is_integer():
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def check(self, value: float) -> float:
        """``value`` when allowed (as ``int`` for integer options), else :class:`OptionError`."""
        if not self.contains(value):
            raise OptionError(f"{self.message()}, got {value!r}")
        return int(value) if self.integer else float(value)

    def parse(self, text: str) -> float:
        """Parse command-line text; :class:`OptionError` naming the range when it is not allowed."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise OptionError(f"{self.message()}, got {text!r}") from None
        if not self.contains(value):
            raise OptionError(f"{self.message()}, got {text}")
        return value

    def argparse(self, text: str) -> float:
        """An ``argparse`` ``type=`` function: argparse prints the one line and exits 2."""
        try:
            return self.parse(text)
        except OptionError as e:
            raise argparse.ArgumentTypeError(str(e)) from None


BEAM_SIZE = Range("beam size", 1, 20)
MAX_LENGTH = Range("max length", 1, 100)
LENGTH_PENALTY = Range("length penalty", 0.0, 5.0, integer=False)
TEMPERATURE = Range("temperature", 0.0, 10.0, integer=False, low_open=True)
BATCH_SIZE = Range("batch size", 1, 1024)
WORKERS = Range("workers", 0, 64)
NO_REPEAT_NGRAM = Range("no repeat ngram size", 0, 10)  # 0: off
NUM_CAPTIONS = Range("num captions", 1, 10)  # n-best: the K best beams (at most the beam size)
LABELS = Range("labels", 0, 20)  # top-K ImageNet classes of the backbone; 0: none
DEFAULT_LABELS = 3  # what the command line and folder runs add, shown beside out-of-domain captions
MIN_WORD_PROB = Range("min word probability", 0.0, 1.0, integer=False)  # 0: off
# The caption of an image outside the training data ends before the first word the model
# gives less than this probability. On 1,000 held-out scenes the shipped model's least likely
# word is above 0.2, while on photos unlike its training images every word is below 0.15:
# docs/trust.md.
DEFAULT_MIN_WORD_PROB = 0.1

RANGES: dict[str, Range] = {
    "beam_size": BEAM_SIZE,
    "max_length": MAX_LENGTH,
    "length_penalty": LENGTH_PENALTY,
    "temperature": TEMPERATURE,
    "batch_size": BATCH_SIZE,
    "workers": WORKERS,
    "no_repeat_ngram_size": NO_REPEAT_NGRAM,
    "labels": LABELS,
    "num_captions": NUM_CAPTIONS,
    "min_word_prob": MIN_WORD_PROB,
}


@dataclass(frozen=True)
class CaptionOptions:
    """How to generate captions: beam size (1 = greedy), word limit (None = the model's
    setting), beam-search length penalty, no repeated n-gram (None = the decoder's default,
    0 = off), how many ImageNet labels to add (0 = none) and how many captions per image (the
    n-best beams; at most ``beam_size``). Construction checks every value against its
    :class:`Range` and raises :class:`OptionError` (a ``ValueError``) naming the allowed range."""

    beam_size: int = 1
    max_length: int | None = None
    length_penalty: float = 0.0
    no_repeat_ngram_size: int | None = None
    labels: int = 0
    num_captions: int = 1

    def __post_init__(self) -> None:
        BEAM_SIZE.check(self.beam_size)
        if self.max_length is not None:
            MAX_LENGTH.check(self.max_length)
        LENGTH_PENALTY.check(self.length_penalty)
        if self.no_repeat_ngram_size is not None:
            NO_REPEAT_NGRAM.check(self.no_repeat_ngram_size)
        LABELS.check(self.labels)
        NUM_CAPTIONS.check(self.num_captions)
        if self.num_captions > self.beam_size:
            raise OptionError(
                f"num captions must be at most the beam size ({self.beam_size}), got {self.num_captions}; "
                f"raise the beam size to {self.num_captions} or more"
            )
