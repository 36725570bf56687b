"""The hidden-units report: one self-contained HTML page (no script, no external files).

For every property: a table of the strongest units (AUC on the reference captions, on the
model's own captions, on shuffled labels, and the chance ceiling); for the best units a few
captions with every word's background coloured by the unit's activation (red positive,
blue negative, the colour's strength the activation over the unit's largest magnitude);
then a few random units for contrast.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from .fsio import atomic_write_text
from .units import PROPERTIES, TopUnit, UnitsAnalysis, WordSets, word_labels

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}.cap{font-family:ui-monospace,monospace;margin:2px 0}
.tok{padding:1px 3px;margin:0 1px;border-radius:2px}.unit{margin:.6em 0 1em 1em}.note{color:#666}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}
"""


def token_colour(value: float, scale: float) -> str:
    """CSS background of one word: red for a positive activation, blue for a negative one."""
    a = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    rgb = "220,40,40" if value >= 0 else "40,90,220"
    return f"rgba({rgb},{a:.2f})"


def caption_html(words: list[str], values: np.ndarray, scale: float, marks: list[bool] | None = None) -> str:
    """One caption, each word a span coloured by its activation (underlined: the property holds)."""
    spans = []
    for i, (w, x) in enumerate(zip(words, values)):
        style = f"background:{token_colour(float(x), scale)}"
        if marks is not None and marks[i]:
            style += ";text-decoration:underline"
        spans.append(f'<span class="tok" style="{style}" title="{float(x):+.3f}">{html.escape(w)}</span>')
    return '<div class="cap">' + "".join(spans) + "</div>"


def _examples(analysis: UnitsAnalysis, unit: int, prop: str | None, sets: WordSets, n: int) -> list[int]:
    """Reference captions to show for a unit: those where the property holds for some words
    and not others (any caption for a random unit), spread over the split."""
    rec = analysis.recording
    idx = [i for i, s in enumerate(rec.sources) if s == "reference"] or list(range(len(rec.captions)))
    if prop is not None:
        mixed = [i for i in idx if len(set(word_labels(rec.captions[i], sets)[prop])) == 2]
        idx = mixed or idx
    step = max(1, len(idx) // n)
    return idx[::step][:n]


def _unit_block(analysis: UnitsAnalysis, unit: int, prop: str | None, sets: WordSets, n: int) -> str:
    rec = analysis.recording
    all_acts = np.concatenate([a[:, unit] for a in rec.activations])  # (T,)
    scale = float(np.abs(all_acts).max()) if all_acts.size else 1.0
    rows = []
    for i in _examples(analysis, unit, prop, sets, n):
        marks = word_labels(rec.captions[i], sets)[prop] if prop else None
        rows.append(caption_html(rec.captions[i], rec.activations[i][:, unit], scale, marks))
    return "".join(rows)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def _table(prop: str, units: list[TopUnit], ceiling: float) -> str:
    head = (
        "<tr><th class=l>unit</th><th>AUC</th><th>strength</th><th>sign</th>"
        "<th>AUC, own captions</th><th>shuffled labels</th><th>chance ceiling</th></tr>"
    )
    rows = [
        f"<tr><td class=l>{html.escape(t.name)}</td><td>{t.auc:.3f}</td><td>{t.strength:.3f}</td>"
        f"<td>{'+' if t.sign > 0 else '-'}</td><td>{_fmt(t.auc_generated)}</td><td>{t.shuffled:.3f}</td>"
        f"<td>{ceiling:.3f}</td></tr>"
        for t in units
    ]
    return f'<table class="units" data-property="{prop}">{head}{"".join(rows)}</table>'


def render_report(
    analysis: UnitsAnalysis, sets: WordSets, show_units: int = 2, captions: int = 4, random_units: int = 3
) -> str:
    """The report page as a string."""
    info = analysis.info
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>Hidden units</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Interpretable hidden units</h1>",
        f"<p>Model <b>{html.escape(str(info.get('model_id', '')))}</b> ({html.escape(str(info.get('decoder', '')))}), "
        f"split <b>{html.escape(str(info.get('split', '')))}</b> of {html.escape(Path(str(info.get('data', ''))).name)}: "
        f"{info.get('images', '?')} images, {len(analysis.recording.units)} units, "
        f"tokens {', '.join(f'{s}: {sc.tokens}' for s, sc in analysis.scores.items())}.</p>",
        "<p class=note>AUC: ROC-AUC of the unit's activation (the state after reading the word) as a "
        "detector of the property on the reference captions; strength = max(AUC, 1 - AUC), sign: whether "
        "the unit rises (+) or falls (-) on it. <i>Shuffled labels</i>: the same unit with the labels "
        f"permuted ({info.get('shuffles', '?')} times); <i>chance ceiling</i>: the best any unit reaches "
        "on shuffled labels. Words: red positive, blue negative activation; underlined where the "
        "property holds.</p>",
    ]
    for prop, units in analysis.top.items():
        parts.append(f"<h2>{html.escape(prop)}: {html.escape(PROPERTIES[prop])}</h2>")
        parts.append(_table(prop, units, analysis.chance_ceiling[prop]))
        for t in units[:show_units]:
            parts.append(f'<div class="unit"><b>{html.escape(t.name)}</b> (AUC {t.auc:.3f})')
            parts.append(_unit_block(analysis, t.unit, prop, sets, captions) + "</div>")
    rng = np.random.default_rng(int(info.get("seed", 0)))
    n_units = len(analysis.recording.units)
    parts.append("<h2>Random units, for contrast</h2>")
    for u in rng.choice(n_units, size=min(random_units, n_units), replace=False):
        parts.append(f'<div class="unit random"><b>{html.escape(analysis.recording.units[int(u)])}</b>')
        parts.append(_unit_block(analysis, int(u), None, sets, captions) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    analysis: UnitsAnalysis, sets: WordSets, out: str | os.PathLike, json_path: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Write the HTML report and units.json (default: beside it); returns both paths."""
    out = Path(out)
    jpath = Path(json_path) if json_path is not None else out.with_name("units.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_report(analysis, sets))
    atomic_write_text(jpath, json.dumps(analysis.to_dict(), indent=1) + "\n")
    return out, jpath
