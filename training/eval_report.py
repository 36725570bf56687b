"""Rendering an evaluation report: the terminal table and the JSON file.

(The HTML page is :mod:`.eval_html`; a comparison of two systems is :mod:`.eval_compare`.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from captioner.fsio import atomic_write_text
from captioner.metrics import METRIC_LABELS

DOCS = "docs/metrics.md"


def metric_label(name: str) -> str:
    """``"bleu_4"`` -> ``"BLEU-4"``; ``"scene_accuracy"`` -> ``"scene accuracy"``."""
    return METRIC_LABELS.get(name, name.replace("_", " "))


def short_reason(name: str, reason: str) -> str:
    """A skipped metric's reason in a few words, with the docs section that has the rest."""
    anchor = f"{DOCS}#{name}"
    if "CoreNLP" in reason:
        return f"needs Stanford CoreNLP 3.6.0, not installed; see {anchor}"
    if "Java is not installed" in reason:
        return f"needs Java (apt-get install default-jre-headless); see {anchor}"
    first = reason.split("; ")[0].split(" (")[0]
    return (first if len(first) <= 70 else first[:67] + "...") + f"; see {anchor}"


def _value(name: str, value: float | None) -> str:
    if value is None:
        return f"{'n/a':>8}"
    if name == "scene_accuracy":
        return f"{100 * value:7.1f}%"
    return f"{value:8.4f}"


def _interval(name: str, interval: list | None) -> str:
    if not interval or interval[0] is None or interval[1] is None:
        return ""
    lo, hi = interval
    if name == "scene_accuracy":
        return f"  {100 * lo:5.1f}-{100 * hi:.1f}%"
    return f"  {lo:.4f}-{hi:.4f}"


def format_table(report: dict) -> str:
    """The report's metrics as an aligned text table, then the notes worth reading."""
    tok = report.get("tokenizer")
    lines = []
    if tok:
        lines.append(f"tokenizer: {tok['name']} = {tok['description']}")
        if tok.get("units") == "characters":
            lines.append("scored over characters: the captions are (partly) Chinese or Japanese")
    boot = report.get("bootstrap")
    intervals = report.get("intervals", {})
    head = f"{'metric':<16}{'value':>8}"
    if boot:
        head += f"  {int(100 * boot['level'])}% interval ({boot['resamples']} resamples of the images)"
    lines += [head, "-" * len(head)]
    for name, value in report.get("metrics", {}).items():
        text = _value(name, value) + _interval(name, intervals.get(name))
        if name == "scene_accuracy":
            scene = report.get("scene", {})
            text += f"  ({scene.get('correct')} of {scene.get('total')} exactly right)"
        lines.append(f"{metric_label(name):<16}{text}")
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"{metric_label(name):<16}{'skipped':>8}  ({short_reason(name, reason)})")
    lines.append("")
    lines.append(f"images scored: {report.get('images')}")
    for note in report.get("notes", []):
        lines.append(note)
    worst = report.get("worst", [])[:3]
    if worst:
        lines.append(f"lowest {metric_label(report.get('worst_by', ''))}:")
        for row in worst:
            score = row["scores"].get(report["worst_by"])
            lines.append(
                f"  {row['file']}  {score if score is None else round(score, 3)}  "
                f'"{row["caption"]}"  (e.g. "{row["references"][0]}")'
            )
    return "\n".join(lines)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` through a temporary file beside ``path`` (never half-written)."""
    return atomic_write_text(path, text)


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write ``report`` as indented JSON through a temporary file (never half-written)."""
    return write_text_atomic(json.dumps(report, indent=2, ensure_ascii=False) + "\n", path)
