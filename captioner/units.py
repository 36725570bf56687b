"""Interpretable hidden units: which units of the decoder's state track a property a
person can name.

The decoder reads each caption word by word (teacher forcing: the input at every step is
the caption's own previous word). After it has read word ``w_i`` its state -- every unit of
the hidden state of every layer, and the cell state for an LSTM -- is recorded as that
word's activation. Captions come from two sources: the split's reference captions and the
model's own greedy captions of the same images.

Every word gets a label for each :data:`PROPERTIES` entry (colour word, count word, ...).
A unit's score for a property is the ROC-AUC of its activation as a detector of the
property: 1.0 means every positive word has a higher activation than every negative one,
0.0 the reverse (the unit *falls* on the property), 0.5 chance. Units are ranked by the
strength ``max(auc, 1 - auc)``; ``sign`` says which way the unit goes. Beside it stands a
label-shuffled baseline: the same scores with the labels permuted across tokens, both for
the top unit itself and as the best any unit reaches on shuffled labels (the *chance
ceiling*), so a unit that is picked only because there are many units is recognised.

The AUCs are computed for all units at once from one ranking of every unit's activations
(Mann-Whitney: AUC = (sum of positive ranks - n+(n+ + 1)/2) / (n+ n-)).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import rankdata

from .errors import CaptionerError
from .vocab import Vocabulary, tokenize

if TYPE_CHECKING:
    from .decoder import CaptionDecoder
    from .model import ReferenceCaptioner as Captioner

PROPERTIES: dict[str, str] = {
    "colour": "a colour word",
    "count": "a count word (a, an, one, two, three, ...)",
    "object": "a word naming an object",
    "plural": "a plural noun",
    "function": "a function word (article, preposition, conjunction, is/are)",
    "before_end": "the last word of the caption (the next token is <end>)",
    "second_half": "a word in the second half of the caption",
    "after_background": "a word after the word 'background'",
}
SOURCES = ("reference", "generated")
COLOURS = frozenset(
    ["white", "gray", "grey", "black", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"]
)
COUNTS = frozenset(["a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "with",
        "and",
        "there",
        "is",
        "are",
        "front",
        "against",
        "to",
        "at",
        "by",
        "for",
        "from",
        "its",
        "it",
        "this",
        "that",
    ]
)
BATCH = 64  # captions per teacher-forced batch


@dataclass(frozen=True)
class WordSets:
    """The words behind the word properties."""

    colours: frozenset[str] = COLOURS
    counts: frozenset[str] = COUNTS
    objects: frozenset[str] = frozenset()
    plurals: frozenset[str] = frozenset()
    functions: frozenset[str] = FUNCTION_WORDS

    @classmethod
    def from_catalogue(cls, categories: Sequence[dict], backgrounds: Sequence[str]) -> WordSets:
        """From a scenes ground truth's catalogue (kinds with their plural, background colours)."""
        objects: set[str] = set()
        plurals: set[str] = set()
        for c in categories:
            singular, plural = tokenize(c["name"]), tokenize(c["plural"])
            objects.update(singular + plural)
            if plural != singular:
                plurals.add(plural[-1])
        colours = COLOURS | {w for b in backgrounds for w in tokenize(b)}
        return cls(colours=frozenset(colours), objects=frozenset(objects), plurals=frozenset(plurals))


def word_sets(data_dir: str | os.PathLike, split: str) -> WordSets:
    """The scenes catalogue of ``data_dir`` when it is a scenes dataset, else the built-in
    colour, count and function words (object and plural words then stay unknown)."""
    path = Path(data_dir) / f"scenes_{split}.json"
    if not path.is_file():
        return WordSets()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return WordSets.from_catalogue(data["categories"], data["backgrounds"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CaptionerError(f"{path}: cannot read the scenes catalogue ({type(e).__name__}: {e})") from None


@dataclass
class Sample:
    """One image of the split and its reference captions."""

    path: Path
    captions: list[str]


def load_split(data_dir: str | os.PathLike, split: str, images: int | None = None) -> list[Sample]:
    """The first ``images`` images of ``captions_<split>.json`` (COCO captions format,
    ``file_name`` relative to ``images/``) with their captions."""
    path = Path(data_dir) / f"captions_{split}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        by_id: dict[int, Sample] = {}
        for img in data["images"]:
            by_id[img["id"]] = Sample(Path(data_dir) / "images" / img["file_name"], [])
        for a in data["annotations"]:
            by_id[a["image_id"]].captions.append(str(a["caption"]))
    except FileNotFoundError:
        raise CaptionerError(f"{path}: no captions for split {split!r} here (expected COCO captions JSON)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CaptionerError(f"{path}: not a COCO captions file ({type(e).__name__}: {e})") from None
    samples = [s for s in by_id.values() if s.captions]
    return samples[:images] if images is not None else samples


@dataclass
class Recording:
    """Every unit's activation at every word of every caption."""

    units: list[str]  # unit names: "h0:17" (hidden state, layer 0, unit 17), "c0:17" (LSTM cell)
    captions: list[list[str]]  # the words of each caption
    sources: list[str]  # "reference" | "generated", per caption
    activations: list[np.ndarray]  # per caption (len(words), U) float32


def state_units(state: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(B, U): every layer's hidden state, then (LSTM) every layer's cell state."""
    parts = state if isinstance(state, tuple) else (state,)
    return torch.cat([layer for s in parts for layer in s], dim=1)  # (B, L * H [* 2])


def unit_names(decoder: CaptionDecoder) -> list[str]:
    c = decoder.config
    kinds = ("h", "c") if c.cell == "lstm" else ("h",)
    return [f"{k}{layer}:{i}" for k in kinds for layer in range(c.num_layers) for i in range(c.hidden_dim)]


@torch.no_grad()
def teacher_forced_states(decoder: CaptionDecoder, features: torch.Tensor, ids: list[list[int]]) -> list[np.ndarray]:
    """The state after reading each word of each caption: per caption (len(ids[i]), U).
    ``features`` has one row per caption ((B, F) pooled or (B, N, F) maps); ``ids`` are word
    ids without specials. The decoder is put in eval mode."""
    decoder.eval()
    out: list[np.ndarray] = []
    for lo in range(0, len(ids), BATCH):
        rows = ids[lo : lo + BATCH]
        T = max((len(r) for r in rows), default=0) + 1
        tokens = torch.zeros(len(rows), T, dtype=torch.long)  # (B, T): <start> w1 .. wn, padded
        tokens[:, 0] = Vocabulary.start_id
        for b, r in enumerate(rows):
            tokens[b, 1 : len(r) + 1] = torch.tensor(r, dtype=torch.long)
        memory, state = decoder._prepare(features[lo : lo + BATCH])
        steps = []
        for t in range(T):
            _, state = decoder.step(tokens[:, t].to(features.device), memory, state)  # (B, V)
            if t >= 1:
                steps.append(state_units(state).float().cpu())  # (B, U) after reading word t
        acts = torch.stack(steps, dim=1).numpy() if steps else np.zeros((len(rows), 0, 0), np.float32)  # (B, T-1, U)
        out.extend(acts[b, : len(r)].astype(np.float32) for b, r in enumerate(rows))
    return out


def record(
    decoder: CaptionDecoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    captions: dict[str, list[tuple[int, list[int]]]],
) -> Recording:
    """Teacher-forced activations for captions given per source as (feature row, word ids)."""
    rec = Recording(unit_names(decoder), [], [], [])
    for source, items in captions.items():
        items = [(i, ids) for i, ids in items if ids]
        if not items:
            continue
        rows = torch.tensor([i for i, _ in items], dtype=torch.long, device=features.device)
        rec.activations += teacher_forced_states(decoder, features.index_select(0, rows), [ids for _, ids in items])
        rec.captions += [[vocab.itos[t] for t in ids] for _, ids in items]
        rec.sources += [source] * len(items)
    return rec


def word_labels(words: list[str], sets: WordSets) -> dict[str, list[bool]]:
    """Every property's label for each word of one caption."""
    n = len(words)
    seen = [any(w == "background" for w in words[:i]) for i in range(n)]
    return {
        "colour": [w in sets.colours for w in words],
        "count": [w in sets.counts for w in words],
        "object": [w in sets.objects for w in words],
        "plural": [w in sets.plurals for w in words],
        "function": [w in sets.functions for w in words],
        "before_end": [i == n - 1 for i in range(n)],
        "second_half": [2 * i >= n for i in range(n)],
        "after_background": seen,
    }


def label_matrix(captions: list[list[str]], sets: WordSets) -> np.ndarray:
    """(P, T) bool: property p of token t, tokens of all captions in order."""
    per = [word_labels(c, sets) for c in captions]
    return np.array([[x for lab in per for x in lab[p]] for p in PROPERTIES], dtype=bool).reshape(len(PROPERTIES), -1)


def auc_matrix(ranks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC-AUC (P, U) of every unit for every property, from the activations' ranks (T, U)
    (ties averaged) and labels (P, T); NaN where a property has no positive or no negative."""
    pos = labels.sum(axis=1).astype(np.float64)[:, None]  # (P, 1)
    neg = labels.shape[1] - pos  # (P, 1)
    rank_sum = labels.astype(np.float64) @ ranks  # (P, U)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    auc[(pos[:, 0] == 0) | (neg[:, 0] == 0)] = np.nan
    return auc


@dataclass
class SourceScores:
    """The AUCs of one caption source."""

    tokens: int
    positives: dict[str, int]
    auc: np.ndarray  # (P, U)
    shuffled: np.ndarray  # (S, P, U): with the labels permuted across tokens, S permutations


def score(acts: np.ndarray, labels: np.ndarray, shuffles: int, seed: int) -> SourceScores:
    """AUCs of activations (T, U) against labels (P, T), and ``shuffles`` label-shuffled ones."""
    ranks = rankdata(acts, axis=0)  # (T, U)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([auc_matrix(ranks, labels[:, rng.permutation(labels.shape[1])]) for _ in range(shuffles)])
    positives = {p: int(n) for p, n in zip(PROPERTIES, labels.sum(axis=1))}
    return SourceScores(int(acts.shape[0]), positives, auc_matrix(ranks, labels), shuffled)


@dataclass
class TopUnit:
    unit: int
    name: str
    auc: float  # on the reference captions
    strength: float  # max(auc, 1 - auc)
    sign: int  # +1: higher on the property, -1: lower
    auc_generated: float | None  # the same unit on the model's own captions
    shuffled: float  # its strength on shuffled labels (mean over the permutations)


@dataclass
class UnitsAnalysis:
    """The result of :func:`analyse_units` (``to_dict`` is units.json)."""

    recording: Recording
    scores: dict[str, SourceScores]
    top: dict[str, list[TopUnit]]  # per property, strongest first
    chance_ceiling: dict[str, float]  # per property: the best strength on shuffled labels
    info: dict = field(default_factory=dict)

    def best(self) -> tuple[str, TopUnit] | None:
        """The (property, unit) with the highest strength."""
        pairs = [(p, t[0]) for p, t in self.top.items() if t]
        return max(pairs, key=lambda pt: pt[1].strength) if pairs else None

    def to_dict(self) -> dict:
        def rounded(a: np.ndarray) -> list:
            return [None if np.isnan(x) else round(float(x), 4) for x in a]

        props: dict[str, dict] = {}
        for k, p in enumerate(PROPERTIES):
            props[p] = {
                "description": PROPERTIES[p],
                "chance_ceiling": self.chance_ceiling.get(p),
                "top": [vars(t) for t in self.top.get(p, [])],
                **{
                    s: {
                        "positives": sc.positives[p],
                        "auc": rounded(sc.auc[k]),
                        "shuffled_auc": rounded(sc.shuffled[0, k]),
                    }
                    for s, sc in self.scores.items()
                },
            }
        return {
            **self.info,
            "tokens": {s: sc.tokens for s, sc in self.scores.items()},
            "units": self.recording.units,
            "properties": props,
        }


def analyse_recording(
    rec: Recording, sets: WordSets, top_k: int = 5, shuffles: int = 10, seed: int = 0
) -> UnitsAnalysis:
    """Score every unit of a recording for every property; units ranked on the reference
    captions (or the generated ones when there are no references)."""
    scores: dict[str, SourceScores] = {}
    for source in SOURCES:
        idx = [i for i, s in enumerate(rec.sources) if s == source]
        if not idx:
            continue
        acts = np.concatenate([rec.activations[i] for i in idx])  # (T, U)
        scores[source] = score(acts, label_matrix([rec.captions[i] for i in idx], sets), shuffles, seed)
    if not scores:
        raise CaptionerError("no captions to analyse")
    main = scores.get("reference") or next(iter(scores.values()))
    gen = scores.get("generated")
    top: dict[str, list[TopUnit]] = {}
    ceiling: dict[str, float] = {}
    for k, p in enumerate(PROPERTIES):
        auc = main.auc[k]  # (U,)
        if np.isnan(auc).all():
            continue
        strength = np.maximum(auc, 1 - auc)  # (U,)
        shuffled = np.maximum(main.shuffled[:, k], 1 - main.shuffled[:, k])  # (S, U)
        ceiling[p] = round(float(shuffled.max()), 4)
        top[p] = []
        for u in np.argsort(-strength)[:top_k]:
            g = None if gen is None or np.isnan(gen.auc[k, u]) else round(float(gen.auc[k, u]), 4)
            top[p].append(
                TopUnit(
                    int(u),
                    rec.units[u],
                    round(float(auc[u]), 4),
                    round(float(strength[u]), 4),
                    1 if auc[u] >= 0.5 else -1,
                    g,
                    round(float(shuffled[:, u].mean()), 4),
                )
            )
    return UnitsAnalysis(rec, scores, top, ceiling)


def encode_images(model: Captioner, paths: Sequence[Path], batch_size: int = 32) -> torch.Tensor:
    """Features of image files through the one image path: (B, F) or (B, N, F)."""
    from . import pipeline

    chunks = []
    for lo in range(0, len(paths), batch_size):
        tensors = [model.preprocess(p) for p in paths[lo : lo + batch_size]]
        chunks.append(torch.from_numpy(pipeline.encode_batch(model, tensors)))
    return torch.cat(chunks)


def analyse_units(
    model: Captioner,
    data_dir: str | os.PathLike,
    split: str = "val",
    images: int | None = 200,
    top_k: int = 5,
    shuffles: int = 10,
    seed: int = 0,
) -> UnitsAnalysis:
    """The whole analysis on a dataset split: encode ``images`` images, caption them greedily,
    record the decoder's units over their reference captions and over those captions, and
    score every unit for every property (see the module docstring)."""
    samples = load_split(data_dir, split, images)
    if not samples:
        raise CaptionerError(f"{data_dir}: split {split!r} has no captioned images")
    sets = word_sets(data_dir, split)
    features = encode_images(model, [s.path for s in samples])  # (B, F) or (B, N, F)
    v = model.vocab
    generated = model.generate(features.numpy())
    captions = {
        "reference": [(i, v.encode(c, add_special=False)) for i, s in enumerate(samples) for c in s.captions],
        "generated": [(i, r.tokens) for i, r in enumerate(generated)],
    }
    rec = record(model.decoder, v, features.to(model.device), captions)
    analysis = analyse_recording(rec, sets, top_k=top_k, shuffles=shuffles, seed=seed)
    analysis.info = {
        "model_id": model.model_id,
        "decoder": model.decoder.config.cell,
        "data": str(data_dir),
        "split": split,
        "images": len(samples),
        "captions": {s: sum(1 for x in rec.sources if x == s) for s in SOURCES},
        "shuffles": shuffles,
        "seed": seed,
    }
    return analysis
