"""The HTML shell shared by the report and the dashboards: one self-contained file, no external resources.

Styles and the table-sorting script are inline, images are data URIs, so a page opens offline in any
browser and can be mailed as a single file.
"""

from __future__ import annotations

import html

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;
 padding:0 20px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
nav{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #eee;z-index:1}
nav a{margin-right:14px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
td:first-child,th:first-child{text-align:left}
th{background:#f4f4f4;cursor:pointer;user-select:none;position:relative}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
td.text{text-align:left;max-width:520px}
.chip{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}
.variant{white-space:nowrap}
.note{background:#f6f8fa;border-left:4px solid #999;padding:6px 10px;margin:8px 0}
.warning{background:#fff4e5;border-left:4px solid #e67e22;padding:6px 10px;margin:8px 0}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}
dl.meta dt{font-weight:600}dl.meta dd{margin:0}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.window{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;
 word-break:break-all;border-bottom:1px solid #eee;padding:3px 0}
.window .max{font-weight:600;color:#555;margin-right:6px}
.tok{border-radius:2px}
.columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:16px}
.columns>div{min-width:0;overflow-x:auto}
svg.histogram rect{fill:#e67e22}
"""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], col = th.cellIndex;
    var dir = th.dataset.dir === "desc" ? 1 : -1;
    th.parentNode.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    var key = function (row) {
      var cell = row.cells[col];
      return cell.dataset.sort !== undefined ? parseFloat(cell.dataset.sort) : cell.textContent.toLowerCase();
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      return (x > y ? 1 : x < y ? -1 : 0) * dir;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def render_page(title: str, body: str) -> str:
    """A complete HTML document around `body` (trusted HTML); `title` is escaped."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n<script>{SORT_SCRIPT}</script></body></html>\n"
    )


def note(text: str, *, warning: bool = False) -> str:
    """A visible boxed remark (escaped): why a section is missing, or a caveat on what is shown."""
    return f'<p class="{"warning" if warning else "note"}">{html.escape(text)}</p>'


def figure(data_uri: str, alt: str) -> str:
    return f'<img class="plot" src="{data_uri}" alt="{html.escape(alt)}">'


def definition_list(items: list[tuple[str, str]]) -> str:
    """`<dl>` of (term, text) pairs, both escaped."""
    return (
        '<dl class="meta">'
        + "".join(f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in items)
        + "</dl>"
    )
