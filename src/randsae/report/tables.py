"""HTML tables for the report and the dashboards: escaped, formatted, sortable by clicking a header.

A numeric cell carries its raw value in `data-sort` so sorting is by number, not by the printed text;
a missing value sorts last in descending order (`-Infinity`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple


class Column(NamedTuple):
    key: str
    label: str
    format: str = ""
    """A format spec for numbers (e.g. ".3f"); empty for text."""
    title: str = ""
    """Hover text on the header (what the column means)."""


def format_value(value: Any, spec: str = "") -> str:
    """Text of one cell: numbers with `spec`, NaN/None as an en dash, booleans as yes/no."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and spec:
        return format(value, spec)
    return str(value)


def _sort_key(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return "-Infinity" if math.isnan(value) else repr(float(value))


def present_columns(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """The columns at least one row has a value for."""
    return [column for column in columns if any(column.key in row for row in rows)]


def html_table(
    columns: Sequence[Column],
    rows: Sequence[Mapping[str, Any]],
    *,
    table_id: str,
    cell_html: Mapping[str, Callable[[Mapping[str, Any]], str]] | None = None,
) -> str:
    """A sortable `<table>`; `cell_html[key](row)` renders a column as trusted HTML (links, colour chips)."""
    cell_html = cell_html or {}
    head = "".join(f'<th title="{html.escape(c.title)}">{html.escape(c.label)}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column.key)
            sort = _sort_key(value)
            attribute = f' data-sort="{sort}"' if sort is not None else ' class="text"'
            content = (
                cell_html[column.key](row)
                if column.key in cell_html
                else html.escape(format_value(value, column.format))
            )
            cells.append(f"<td{attribute}>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="sortable" id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def variant_chip(variant: str, colors: Mapping[str, str]) -> str:
    """The variant's name after a square of its colour."""
    return (
        f'<span class="variant"><span class="chip" style="background:{colors.get(variant, "#000")}"></span>'
        f"{html.escape(variant)}</span>"
    )
