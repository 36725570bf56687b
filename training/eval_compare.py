"""Compare two captioning systems on the same images: is B really better than A?

    captioner evaluate --predictions A.jsonl --compare B.jsonl --references data/scenes --split test
    captioner evaluate --checkpoint runs/a/best --compare runs/b/best --data data/scenes

Both systems are scored on the images both captioned, with the same tokenizer. For each
metric the report gives A, B, the difference B - A, its 95 % paired-bootstrap interval
and a two-sided p-value for "no difference" (:func:`captioner.metrics.bootstrap.paired_bootstrap`:
both systems resampled with the same images), plus the images where the two differ most
on the per-image CIDEr-D.
"""

from __future__ import annotations

from collections.abc import Sequence

from captioner.errors import CaptionerError
from captioner.metrics import DEFAULT_METRICS
from captioner.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL, paired_bootstrap
from captioner.metrics.tokenize import TOKENIZER_DESCRIPTIONS

from .datasets import CaptionDataset, CaptionedImage
from .eval_report import metric_label
from .evaluate import _clean, _relative_name, score_pairs

COMPARE_FORMAT = "captioner-comparison/1"
DIFFER_K = 10


def _common(
    pairs_a: Sequence[tuple[CaptionedImage, str]], pairs_b: Sequence[tuple[CaptionedImage, str]]
) -> tuple[list[tuple[CaptionedImage, str]], list[tuple[CaptionedImage, str]], int, int]:
    """Both lists cut to the images both have, in A's order; and how many each had alone."""
    b_by_path = {item.image_path: caption for item, caption in pairs_b}
    a_paths = {item.image_path for item, _ in pairs_a}
    common_a = [(item, caption) for item, caption in pairs_a if item.image_path in b_by_path]
    common_b = [(item, b_by_path[item.image_path]) for item, _ in common_a]
    only_b = sum(1 for item, _ in pairs_b if item.image_path not in a_paths)
    return common_a, common_b, len(pairs_a) - len(common_a), only_b


def compare_captions(
    pairs_a: Sequence[tuple[CaptionedImage, str]],
    pairs_b: Sequence[tuple[CaptionedImage, str]],
    dataset: CaptionDataset,
    *,
    names: tuple[str, str] = ("A", "B"),
    metrics: Sequence[str] = DEFAULT_METRICS,
    tokenizer: str = "auto",
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    differ_k: int = DIFFER_K,
) -> dict:
    """The comparison report of system B against system A (see the module docstring)."""
    if bootstrap < 1:
        raise CaptionerError("comparing two systems needs --bootstrap of at least 1 (1000 is the default)")
    common_a, common_b, only_a, only_b = _common(pairs_a, pairs_b)
    if not common_a:
        raise CaptionerError(
            f"the two systems captioned no image in common ({len(pairs_a)} and {len(pairs_b)} images); "
            "compare captions of the same images"
        )
    a = score_pairs(common_a, dataset, metrics=metrics, tokenizer=tokenizer)
    b = score_pairs(common_b, dataset, metrics=metrics, tokenizer=a.tokenizer)
    corpus_a, corpus_b = a.metrics(), b.metrics()
    # B first: the differences are B - A
    diffs = paired_bootstrap(b.image_stats(), a.image_stats(), corpus_b, corpus_a, bootstrap, seed, LEVEL)
    notes = list(a.notes)
    if only_a or only_b:
        notes.append(
            f"note: scored on the {len(common_a)} images both systems captioned; "
            f"left out {only_a} only {names[0]} and {only_b} only {names[1]} captioned"
        )
    report: dict = {
        "format": COMPARE_FORMAT,
        "systems": list(names),
        "images": len(common_a),
        "tokenizer": {"name": a.tokenizer, "description": TOKENIZER_DESCRIPTIONS[a.tokenizer]},
        "bootstrap": {"resamples": bootstrap, "seed": seed, "level": LEVEL},
        "metrics": {
            name: {
                "a": _clean(d.b),
                "b": _clean(d.a),
                "difference": _clean(d.difference),
                "interval": [_clean(d.interval[0]), _clean(d.interval[1])],
                "p_value": d.p_value,
            }
            for name, d in diffs.items()
        },
        "skipped": {**a.scores.skipped, **b.scores.skipped},
        "notes": notes,
    }
    rank = "cider_d" if "cider_d" in a.scores.per_image else next(iter(a.scores.per_image), None)
    if rank is not None:
        rows: list[dict] = []
        for i, (item, caption_a), (_, caption_b) in zip(a.ids, common_a, common_b):
            sa, sb = a.scores.per_image[rank][i], b.scores.per_image[rank][i]
            rows.append(
                {
                    "image_id": i,
                    "file": _relative_name(item, dataset),
                    "a": caption_a,
                    "b": caption_b,
                    "a_score": _clean(sa),
                    "b_score": _clean(sb),
                    "difference": _clean(sb - sa),
                    "references": list(item.captions),
                }
            )
        rows.sort(key=lambda r: -abs(r["difference"] or 0.0))
        report["differ_by"] = rank
        report["differ_most"] = rows[:differ_k]
    return report


def format_comparison(report: dict) -> str:
    """The comparison as an aligned text table, then the images that differ most."""
    a_name, b_name = report["systems"]
    boot = report["bootstrap"]
    lines = [
        f"A = {a_name}",
        f"B = {b_name}",
        f"tokenizer: {report['tokenizer']['name']} = {report['tokenizer']['description']}",
        f"{'metric':<16}{'A':>8}{'B':>9}{'B - A':>9}  {int(100 * boot['level'])}% interval{'p':>10}",
    ]
    lines.append("-" * len(lines[-1]))
    for name, m in report["metrics"].items():
        if m["a"] is None or m["b"] is None or m["difference"] is None:
            lines.append(f"{metric_label(name):<16}{'n/a':>8}")
            continue
        lo, hi = m["interval"]
        interval = f"{lo:+.4f} {hi:+.4f}" if lo is not None and hi is not None else ""
        lines.append(
            f"{metric_label(name):<16}{m['a']:8.4f}{m['b']:9.4f}{m['difference']:+9.4f}  {interval:<17}"
            f"{m['p_value']:8.3f}"
        )
    lines.append("")
    lines.append(
        f"images: {report['images']}; p: paired bootstrap, {boot['resamples']} resamples "
        f"(smallest possible {1 / (boot['resamples'] + 1):.4f})"
    )
    lines += report.get("notes", [])
    rows = report.get("differ_most", [])[:5]
    if rows:
        lines.append(f"images where they differ most ({metric_label(report['differ_by'])}):")
        for r in rows:
            lines.append(f'  {r["file"]}  {r["difference"]:+.3f}  A: "{r["a"]}"  B: "{r["b"]}"')
    return "\n".join(lines)
