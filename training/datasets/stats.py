"""Statistics of a caption dataset (what ``captioner data stats`` prints).

Vocabulary sizes follow :meth:`captioner.vocab.Vocabulary.build` exactly: the words of
``captioner.vocab.tokenize`` seen at least ``min_count`` times, not counting the four
special tokens. The report says which rule split the captions: words, or one token per
character for captions in Chinese or Japanese (written without spaces), so a dataset in
those scripts is visibly counted in characters, not as one "word" per caption.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from captioner.vocab import TOKENIZATION_RULE, is_unspaced, tokenize

from .common import CaptionDataset

VOCAB_MIN_COUNTS = (1, 5)


@dataclass
class DatasetStats:
    source: str
    format: str
    images: int
    captions: int
    splits: dict[str, dict[str, int]]  # split -> {"images": n, "captions": n}
    captions_per_image: Counter  # captions per image -> number of images
    vocab_sizes: dict[int, int]  # min count -> words
    caption_lengths: Counter  # length in tokens -> number of captions
    missing_files: int
    problems: dict[str, int] = field(default_factory=dict)
    by_characters: int = 0  # captions (partly) in Chinese or Japanese: one token per character

    @property
    def token_unit(self) -> str:
        """What a caption's length counts: words, characters, or both (a mixed dataset)."""
        if not self.by_characters:
            return "words"
        return "characters" if self.by_characters == self.captions else "words and characters"

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "images": self.images,
            "captions": self.captions,
            "splits": self.splits,
            "captions_per_image": {str(k): v for k, v in sorted(self.captions_per_image.items())},
            "vocab_sizes": {str(k): v for k, v in self.vocab_sizes.items()},
            "caption_lengths": {str(k): v for k, v in sorted(self.caption_lengths.items())},
            "missing_files": self.missing_files,
            "problems": self.problems,
            "tokenization": {
                "rule": TOKENIZATION_RULE,
                "captions_by_characters": self.by_characters,
                "unit": self.token_unit,
            },
        }


def compute_stats(ds: CaptionDataset, progress: bool | None = None) -> DatasetStats:
    """Count images, captions, words and caption lengths of ``ds``."""
    words: Counter = Counter()
    lengths: Counter = Counter()
    per_image: Counter = Counter()
    by_characters = 0
    splits: dict[str, dict[str, int]] = {s: {"images": 0, "captions": 0} for s in ds.splits}
    show = progress if progress is not None else ds.num_captions >= 50_000
    for item in tqdm(ds.items, desc="counting words", unit="img", disable=not show, leave=False):
        per_image[len(item.captions)] += 1
        splits[item.split]["images"] += 1
        splits[item.split]["captions"] += len(item.captions)
        for caption in item.captions:
            tokens = tokenize(caption)
            by_characters += is_unspaced(caption)
            words.update(tokens)
            lengths[len(tokens)] += 1
    vocab = {k: sum(1 for n in words.values() if n >= k) for k in VOCAB_MIN_COUNTS}
    return DatasetStats(
        source=str(ds.source),
        format=ds.format,
        images=len(ds),
        captions=ds.num_captions,
        splits=splits,
        captions_per_image=per_image,
        vocab_sizes=vocab,
        caption_lengths=lengths,
        missing_files=ds.report.missing_files,
        problems=dict(ds.report.counts),
        by_characters=by_characters,
    )


def histogram_lines(counts: Counter, width: int = 40, max_rows: int = 16, label: str = "") -> list[str]:
    """A text histogram; values are grouped into equal bins when there are more than ``max_rows``."""
    if not counts:
        return ["  (none)"]
    lo, hi = min(counts), max(counts)
    step = max(1, -(-(hi - lo + 1) // max_rows))  # ceil division
    bins = []
    for start in range(lo, hi + 1, step):
        end = min(hi, start + step - 1)
        bins.append((start, end, sum(counts.get(v, 0) for v in range(start, end + 1))))
    top = max(n for _, _, n in bins) or 1
    total = sum(counts.values())
    lines = []
    for start, end, n in bins:
        name = f"{start}" if start == end else f"{start}-{end}"
        bar = "#" * round(width * n / top)
        lines.append(f"  {name:>7} {label}{n:>9}  {100 * n / total:5.1f}%  {bar}")
    return lines


def format_stats(stats: DatasetStats, problems: str | None = None) -> str:
    """The human-readable report. ``problems``: the load report's list of problems, shown
    at the end instead of the count lines (so each problem is said once)."""
    per = stats.captions_per_image
    n_img = sum(per.values())
    mean = sum(k * v for k, v in per.items()) / n_img if n_img else 0.0
    total_len = sum(stats.caption_lengths.values())
    mean_len = sum(k * v for k, v in stats.caption_lengths.items()) / total_len if total_len else 0.0
    lines = [
        f"dataset      {stats.source} ({stats.format})",
        f"images       {stats.images}",
        f"captions     {stats.captions}",
    ]
    for split, c in stats.splits.items():
        lines.append(f"  {split:<10} {c['images']:>8} images {c['captions']:>9} captions")
    if per:
        lines.append(f"captions per image  min {min(per)}  mean {mean:.2f}  max {max(per)}")
    if stats.by_characters:
        tokenized = (
            f"{stats.by_characters} of {stats.captions} captions in Chinese or Japanese: one token per character"
        )
    else:
        tokenized = "words (no caption in a script written without spaces)"
    lines.append(f"tokens       {tokenized}")
    unit = "words" if stats.token_unit == "words" else "tokens"
    for k, v in stats.vocab_sizes.items():
        lines.append(f"vocabulary ({unit} seen >= {k} time{'s' if k > 1 else ''})  {v}")
    if not problems:
        lines.append(f"missing image files  {stats.missing_files}")
        other = {k: v for k, v in stats.problems.items() if k != "missing_file"}
        if other:
            lines.append("other problems  " + ", ".join(f"{k}: {v}" for k, v in sorted(other.items())))
    if total_len:
        lines.append(
            f"caption length in {stats.token_unit}  min {min(stats.caption_lengths)}  mean {mean_len:.1f}  "
            f"max {max(stats.caption_lengths)}"
        )
    lines += histogram_lines(stats.caption_lengths)
    if problems:
        lines.append(problems)
    return "\n".join(lines)
