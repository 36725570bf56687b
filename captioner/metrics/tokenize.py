"""Turning {image id: caption} and {image id: [references]} into checked token lists.

All metrics score the output of one tokenizer:

* ``"ours"`` (the library default): the project's own :func:`captioner.vocab.tokenize`
  (NFKC, lower-case, runs of letters/digits with inner apostrophes, everything else
  dropped), the one the vocabulary is built with; it needs no Java and no downloaded data.
* ``"ptb"``: coco-caption's Stanford PTB tokenizer plus punctuation removal
  (:mod:`captioner.metrics.ptb`, Java), so that scores equal coco-caption's.
* ``"auto"``: ``"ptb"`` when Java and the jar are there, else ``"ours"``
  (:func:`resolve_tokenizer` says which, and why).
* any function from ``str`` to ``list[str]``.

With ``"ours"`` and ``"ptb"``, Chinese and Japanese (scripts written without spaces,
:data:`captioner.vocab.UNSPACED_SCRIPTS`) are scored one character per token, the usual
practice of Chinese captioning metrics: BLEU-4 then counts 4-grams of characters. Without
that, a caption in those scripts would be one "word" and every metric would be all or nothing.

docs/metrics.md lists how the two tokenizers differ.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from captioner.errors import CaptionerError
from captioner.metrics import ptb
from captioner.vocab import is_unspaced, split_unspaced, tokenize

Tokenizer = Callable[[str], list[str]]
TOKENIZERS = ("auto", "ptb", "ours")
CHARACTERS_NOTE = "; Chinese and Japanese one token per character"
TOKENIZER_DESCRIPTIONS = {
    "ptb": ptb.PTB_DESCRIPTION + CHARACTERS_NOTE,
    "ours": "the project's: captioner.vocab.tokenize, NFKC, lower case, words of letters and digits" + CHARACTERS_NOTE,
}


def has_unspaced(texts: Iterable[str]) -> bool:
    """True when a caption is (partly) in a script scored by characters (Chinese, Japanese)."""
    return any(isinstance(t, str) and is_unspaced(t) for t in texts)


def resolve_tokenizer(name: str) -> tuple[str, str | None]:
    """``("ptb" | "ours", note)`` for a tokenizer name from :data:`TOKENIZERS`.

    ``"auto"`` gives ``"ptb"`` when it can run here, else ``"ours"`` with a one-line note
    saying why; an explicit ``"ptb"`` that cannot run raises :class:`CaptionerError`.
    """
    if name not in TOKENIZERS:
        raise CaptionerError(f"unknown tokenizer {name!r}; choose from {', '.join(TOKENIZERS)}")
    if name == "ours":
        return "ours", None
    reason = ptb.ptb_unavailable_reason()
    if reason is None:
        return "ptb", None
    if name == "ptb":
        raise CaptionerError(f"--tokenizer ptb cannot run: {reason}")
    return "ours", (
        "note: tokenizer 'ours', not coco-caption's PTB (it needs Java: apt-get install default-jre-headless); "
        "scores may differ slightly from published ones"
    )


def _examples(ids: list) -> str:
    shown = ", ".join(repr(i) for i in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


@dataclass
class TokenizedCorpus:
    """Predictions and references as token lists, aligned by position (``ids[i]``)."""

    ids: list[Hashable]
    hypotheses: list[list[str]]
    references: list[list[list[str]]]

    def __len__(self) -> int:
        return len(self.ids)

    def hypothesis_strings(self) -> list[str]:
        """Each prediction's tokens joined by single spaces (what coco's scorers take)."""
        return [" ".join(h) for h in self.hypotheses]

    def reference_strings(self) -> list[list[str]]:
        """Each reference's tokens joined by single spaces."""
        return [[" ".join(r) for r in refs] for refs in self.references]

    def to_coco(self) -> tuple[dict, dict]:
        """``(gts, res)`` dictionaries in the shape pycocoevalcap's scorers take."""
        gts = {i: refs for i, refs in zip(self.ids, self.reference_strings())}
        res = {i: [h] for i, h in zip(self.ids, self.hypothesis_strings())}
        return gts, res


def tokenize_corpus(
    predictions: Mapping[Any, str],  # image id (any hashable) -> caption
    references: Mapping[Any, Sequence[str]],
    tokenizer: Tokenizer | str = tokenize,
) -> TokenizedCorpus:
    """Check that predictions and references cover the same images, then tokenize both.

    ``tokenizer`` is a function or a name from :data:`TOKENIZERS` (``"ptb"`` runs
    Java once for the whole corpus; :class:`CaptionerError` when it cannot run).
    Images keep the order of ``references``. Raises :class:`CaptionerError` (naming the
    offending image ids) when an image lacks a prediction or references, a prediction has
    no references, or a caption is not a string.
    """
    if not references:
        raise CaptionerError("there are no references to score against; check the references file and split")
    missing = [i for i in references if i not in predictions]
    extra = [i for i in predictions if i not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} image(s) have references but no prediction ({_examples(missing)})")
        if extra:
            parts.append(f"{len(extra)} prediction(s) have no references ({_examples(extra)})")
        raise CaptionerError(
            "predictions and references do not cover the same images: "
            + "; ".join(parts)
            + ". Score the same split the captions were made for."
        )
    ids: list[Hashable] = []
    texts: list[str] = []  # each image's prediction, then its references
    counts: list[int] = []
    for image_id, ref_list in references.items():
        pred = predictions[image_id]
        if not isinstance(pred, str):
            raise CaptionerError(f"prediction for image {image_id!r} is {type(pred).__name__}, expected a string")
        if isinstance(ref_list, str) or not isinstance(ref_list, Sequence):
            raise CaptionerError(
                f"references for image {image_id!r} must be a list of strings, got {type(ref_list).__name__}"
            )
        if len(ref_list) == 0:
            raise CaptionerError(f"image {image_id!r} has an empty reference list; every image needs at least one")
        for r in ref_list:
            if not isinstance(r, str):
                raise CaptionerError(f"a reference of image {image_id!r} is {type(r).__name__}, expected a string")
        ids.append(image_id)
        texts += [pred, *ref_list]
        counts.append(len(ref_list))
    tokens = _tokenize_all(texts, tokenizer)
    hyps, refs, at = [], [], 0
    for n in counts:
        hyps.append(tokens[at])
        refs.append(tokens[at + 1 : at + 1 + n])
        at += 1 + n
    return TokenizedCorpus(ids, hyps, refs)


def _tokenize_all(texts: list[str], tokenizer: Tokenizer | str) -> list[list[str]]:
    if isinstance(tokenizer, str):
        name, _ = resolve_tokenizer(tokenizer)
        if name == "ptb":
            try:
                tokens = ptb.ptb_tokenize(texts)
            except ptb.TokenizerUnavailable as e:
                raise CaptionerError(f"coco-caption's PTB tokenizer failed: {e}") from None
            return [split_unspaced(t) for t in tokens]  # Chinese and Japanese: characters, as ours
        tokenizer = tokenize
    return [tokenizer(t) for t in texts]
