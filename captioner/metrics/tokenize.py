"""Turning {image id: caption} and {image id: [references]} into checked token lists.

All metrics score the output of one tokenizer, by default the project's own
:func:`captioner.vocab.tokenize` (NFKC, lower-case, runs of letters/digits with inner
apostrophes, everything else dropped), so that scores need no Java and no downloaded
data. coco-caption instead runs Stanford's Java PTB tokenizer first; docs/metrics.md
lists how the two differ.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from captioner.errors import CaptionerError
from captioner.vocab import tokenize

Tokenizer = Callable[[str], list[str]]


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
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    tokenizer: Tokenizer = tokenize,
) -> TokenizedCorpus:
    """Check that predictions and references cover the same images, then tokenize both.

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
    ids, hyps, refs = [], [], []
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
        hyps.append(tokenizer(pred))
        refs.append([tokenizer(r) for r in ref_list])
    return TokenizedCorpus(ids, hyps, refs)
