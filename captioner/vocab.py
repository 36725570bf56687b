"""Vocabulary and tokenizer.

The tokenizer needs no downloaded data (no nltk punkt): it applies Unicode NFKC
normalisation, lower-cases, and keeps runs of letters and digits, allowing apostrophes
inside a word ("dog's" stays one token, as does "don't"). Every other character
(punctuation, symbols, whitespace) separates tokens and is dropped. So
``"A Dog's toy, on a RED mat!"`` becomes ``["a", "dog's", "toy", "on", "a", "red", "mat"]``.

Chinese and Japanese are written without spaces between words, so a run of letters there is
a whole sentence. In those scripts (:data:`UNSPACED_SCRIPTS`: Han, Hiragana, Katakana,
Bopomofo) every character is one token, the usual practice of Chinese captioning metrics:
``"两只狗在草地上"`` becomes ``["两", "只", "狗", "在", "草", "地", "上"]`` and ``"两只cat"``
``["两", "只", "cat"]``. Korean (Hangul) is written with spaces and keeps its words. Thai,
Lao, Khmer and Myanmar are written without spaces too, but their characters combine with
marks and are no units of meaning: they stay as today (runs of letters; a word segmenter
is needed to train on them). :meth:`Vocabulary.decode` writes such characters without
spaces between them, so a caption reads as the language is written and tokenizes back to
the same tokens.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")

#: Scripts written without spaces between words, tokenized one character per token.
UNSPACED_SCRIPTS = ("Han", "Hiragana", "Katakana", "Bopomofo")
_UNSPACED_CLASS = (
    "\u3005\u3007\u3021-\u3029\u3038-\u303b"  # Han iteration mark, ideographic zero, Hangzhou numerals
    "\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff"  # Hiragana, Katakana (with the prolonged sound mark)
    "\u3100-\u312f\u31a0-\u31bf"  # Bopomofo
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs: extension A, unified, compatibility
    "\U0001b000-\U0001b16f"  # kana supplement and extensions
    "\U00020000-\U0003134f"  # CJK ideographs: extensions B-G, compatibility supplement
)
_UNSPACED = re.compile(f"[{_UNSPACED_CLASS}]")
_LETTER = f"(?:(?![{_UNSPACED_CLASS}])[^\\W_])"  # a letter or digit of a spaced script
_MIXED = re.compile(f"(?=[^\\W_])[{_UNSPACED_CLASS}]|{_LETTER}+(?:['\u2019]{_LETTER}+)*")
#: How :func:`tokenize` splits, in words (``captioner data stats`` and the evaluation report say it).
TOKENIZATION_RULE = (
    "words: runs of letters and digits; scripts written without spaces "
    f"({', '.join(UNSPACED_SCRIPTS)}: Chinese, Japanese): one token per character"
)


def is_unspaced(text: str) -> bool:
    """True when ``text`` has a character of a script written without spaces (:data:`UNSPACED_SCRIPTS`)."""
    return _UNSPACED.search(text) is not None


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case word tokens, characters in Chinese and Japanese (module docstring)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    pattern = _MIXED if _UNSPACED.search(text) else _WORD  # the plain rule is several times faster
    return [t.replace("\u2019", "'") for t in pattern.findall(text)]


def split_unspaced(tokens: Iterable[str]) -> list[str]:
    """Tokens from another tokenizer (coco-caption's PTB) with every Chinese or Japanese
    character made a token of its own, as :func:`tokenize` makes them."""
    out: list[str] = []
    for t in tokens:
        if _UNSPACED.search(t):
            out += _MIXED.findall(t)
        else:
            out.append(t)
    return out


def join_tokens(words: Sequence[str]) -> str:
    """Words as text: a space between two words, none beside a Chinese or Japanese character."""
    parts: list[str] = []
    for i, w in enumerate(words):
        if i and not (_UNSPACED.match(w) or _UNSPACED.match(words[i - 1][-1:])):
            parts.append(" ")
        parts.append(w)
    return "".join(parts)


class Vocabulary:
    """Maps words to ids and back. Ids 0-3 are the special tokens."""

    PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
    SPECIALS = (PAD, START, END, UNK)

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.itos: list[str] = list(self.SPECIALS)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        for w in words:
            if w not in self.stoi:
                self.stoi[w] = len(self.itos)
                self.itos.append(w)

    pad_id = 0
    start_id = 1
    end_id = 2
    unk_id = 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Vocabulary of the words seen at least ``min_count`` times.

        Words are ordered by decreasing frequency, ties alphabetically, so the result is
        deterministic. ``max_size`` caps the number of (non-special) words.
        """
        if min_count < 1:
            raise ValueError("min_count must be >= 1")
        counts = Counter(t for c in captions for t in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max_size]
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of ``text``; unknown words map to ``<unk>``."""
        ids = [self.stoi.get(t, self.unk_id) for t in tokenize(text)]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Words of ``ids`` up to the first ``<end>``, skipping ``<start>`` and ``<pad>``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else self.UNK)
        return join_tokens(words)

    def to_dict(self) -> dict:
        return {"format": "captioner-vocab/1", "tokens": self.itos}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("vocabulary JSON must have a 'tokens' list of strings")
        if tuple(tokens[:4]) != cls.SPECIALS:
            raise ValueError(f"vocabulary must start with the special tokens {list(cls.SPECIALS)}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary has duplicate tokens")
        return cls(tokens[4:])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"
