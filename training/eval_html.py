"""The evaluation report as one self-contained HTML page (``captioner evaluate --html``).

No network: the styles and the sorting script are inline, and each image's thumbnail is
an inline base64 JPEG (decoded through :func:`captioner.pipeline.decode`, the safe
loader with its limits, shrunk to :data:`THUMB_PX`). The page holds the metric table
with the bootstrap intervals, then one row per image (thumbnail, file, prediction,
references, every per-image score), worst first by the report's ranking metric; clicking
a column header sorts by it (again: the other way).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

from captioner.errors import CaptionerError

from .eval_report import metric_label, short_reason, write_text_atomic

THUMB_PX = 96  # longest side of a thumbnail
MAX_THUMBS = 5000  # rows past this get no thumbnail (the page stays a few MB)

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1b1b;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
p.meta{color:#555;margin:2px 0}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
#per-image th{cursor:pointer;user-select:none;position:sticky;top:0}
#per-image th.sorted-asc::after{content:" \\25B2"}#per-image th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.refs ul{margin:0;padding-left:16px}
#per-image{width:100%;font-size:13px}
#per-image th,#per-image td{padding:4px 6px}
#per-image td.file,#per-image td.caption,#per-image td.refs,#per-image td.scene{overflow-wrap:anywhere}
#per-image td.caption,#per-image td.refs{min-width:150px}#per-image td.file{min-width:110px}
#per-image td.scene{min-width:120px}
img.thumb{display:block;max-width:96px;max-height:96px}
.note{color:#8a4b00}
"""

# Sorting: numbers by value (empty cells last), text by locale order; a second click reverses.
SCRIPT = """
(function () {
  var table = document.getElementById("per-image");
  var heads = table.tHead.rows[0].cells;
  function key(row, col) { return row.cells[col].getAttribute("data-sort") || row.cells[col].textContent; }
  function sortBy(col) {
    var th = heads[col], asc = !th.classList.contains("sorted-asc");
    var numeric = th.getAttribute("data-type") === "number";
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col), r;
      if (numeric) {
        x = x === "" ? NaN : parseFloat(x); y = y === "" ? NaN : parseFloat(y);
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
        r = x - y;
      } else { r = x.localeCompare(y); }
      return asc ? r : -r;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    for (var i = 0; i < heads.length; i++) { heads[i].classList.remove("sorted-asc", "sorted-desc"); }
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
  }
  for (var i = 0; i < heads.length; i++) {
    if (heads[i].hasAttribute("data-type")) {
      heads[i].addEventListener("click", sortBy.bind(null, i));
    }
  }
})();
"""


def thumbnail(path: str | os.PathLike, size: int = THUMB_PX) -> str | None:
    """A ``data:image/jpeg;base64,...`` URI of the image at ``path``, or None if it cannot be read."""
    from captioner.errors import ImageLoadError
    from captioner.pipeline import decode

    try:
        image = decode(Path(path), name=str(path))
    except (ImageLoadError, OSError):
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _metric_rows(report: dict) -> list[str]:
    rows = []
    intervals = report.get("intervals", {})
    for name, value in report.get("metrics", {}).items():
        lo_hi = intervals.get(name)
        fmt = "{:.1%}" if name == "scene_accuracy" else "{:.4f}"
        interval = f"{fmt.format(lo_hi[0])} - {fmt.format(lo_hi[1])}" if lo_hi and None not in lo_hi else ""
        shown = "n/a" if value is None else fmt.format(value)
        rows.append(
            f'<tr data-metric="{_e(name)}"><td>{_e(metric_label(name))}</td><td class="num">{shown}</td>'
            f'<td class="num">{interval}</td></tr>'
        )
    for name, reason in report.get("skipped", {}).items():
        rows.append(
            f"<tr><td>{_e(metric_label(name))}</td><td>skipped</td><td>{_e(short_reason(name, reason))}</td></tr>"
        )
    return rows


def _image_rows(report: dict, metrics: list[str], images: Mapping[str, str | os.PathLike] | None) -> list[str]:
    rank = report.get("worst_by")
    rows = list(report.get("per_image", []))
    if rank is not None:
        rows.sort(key=lambda r: (r["scores"].get(rank) is None, r["scores"].get(rank) or 0.0))
    out = []
    for n, row in enumerate(rows):
        uri = None
        if images is not None and n < MAX_THUMBS and row["file"] in images:
            uri = thumbnail(images[row["file"]])
        thumb = f'<img class="thumb" alt="{_e(row["file"])}" src="{uri}">' if uri else ""
        refs = "".join(f"<li>{_e(r)}</li>" for r in row["references"])
        cells = [
            f"<td>{thumb}</td>",
            f'<td class="file">{_e(row["file"])}</td>',
            f'<td class="caption">{_e(row["caption"])}</td>',
            f'<td class="refs"><ul>{refs}</ul></td>',
        ]
        for m in metrics:
            v = row["scores"].get(m)
            cells.append(
                f'<td class="num" data-sort="{"" if v is None else repr(float(v))}">{"" if v is None else f"{v:.3f}"}</td>'
            )
        if "scene_correct" in row:
            ok = row["scene_correct"]
            cells.append(
                f'<td class="scene" data-sort="{int(ok)}">'
                f"{'yes' if ok else _e('; '.join(row.get('scene_errors', [])))}</td>"
            )
        out.append(f'<tr data-image="{_e(row["image_id"])}">{"".join(cells)}</tr>')
    return out


def render_html(report: dict, images: Mapping[str, str | os.PathLike] | None = None, title: str = "") -> str:
    """The page for ``report``; ``images`` maps a row's ``file`` to the image on disk (thumbnails)."""
    rows = report.get("per_image", [])
    metrics = list(rows[0]["scores"]) if rows else []
    has_scene = any("scene_correct" in r for r in rows)
    tok = report.get("tokenizer", {})
    boot = report.get("bootstrap")
    source = report.get("source", {})
    what = source.get("predictions") or source.get("checkpoint") or source.get("model_id") or ""
    heads = [
        "<th>image</th>",
        '<th data-type="text">file</th>',
        '<th data-type="text">prediction</th>',
        "<th>references</th>",
    ]
    heads += [f'<th data-type="number" data-metric="{_e(m)}">{_e(metric_label(m))}</th>' for m in metrics]
    if has_scene:
        heads.append('<th data-type="number">scene right</th>')
    interval_head = f"{int(100 * boot['level'])}% interval ({boot['resamples']} resamples)" if boot else "interval"
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in report.get("notes", []))
    rank = report.get("worst_by")
    metrics_json = json.dumps(report.get("metrics", {})).replace("</", "<\\/")
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title or 'Caption evaluation')}</title><style>{STYLE}</style></head><body>",
            f"<h1>{_e(title or 'Caption evaluation')}</h1>",
            f'<p class="meta">{_e(what)} against {_e(source.get("references") or source.get("data") or "")}</p>',
            f'<p class="meta" id="tokenizer">tokenizer: {_e(tok.get("name", ""))} = {_e(tok.get("description", ""))}</p>',
            f'<p class="meta">images scored: {report.get("images")}</p>',
            notes,
            f'<h2>Metrics</h2><table id="metrics"><thead><tr><th>metric</th><th>value</th><th>{_e(interval_head)}</th></tr></thead>',
            "<tbody>" + "".join(_metric_rows(report)) + "</tbody></table>",
            f"<h2>Every image, worst {_e(metric_label(rank)) if rank else ''} first</h2>",
            '<p class="meta">Click a column header to sort by it.</p>',
            f'<table id="per-image"><thead><tr>{"".join(heads)}</tr></thead>',
            "<tbody>" + "\n".join(_image_rows(report, metrics, images)) + "</tbody></table>",
            f"<script>{SCRIPT}</script>",
            f'<script type="application/json" id="report-metrics">{metrics_json}</script>',
            "</body></html>",
        ]
    )


def write_html(
    report: dict, path: str | os.PathLike, images: Mapping[str, str | os.PathLike] | None = None, title: str = ""
) -> Path:
    """Write :func:`render_html` to ``path`` (atomically)."""
    if "per_image" not in report:
        raise CaptionerError("the HTML page is made from an evaluation report (a comparison has no per-image table)")
    return write_text_atomic(render_html(report, images, title), path)
