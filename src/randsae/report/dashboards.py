"""Per-latent dashboard pages, the per-layer pages that put every variant's latents side by side, and an index.

Layout under RUN/dashboards/:

    index.html                        every layer, with how many latents each variant has
    layer{L}.html                     one column per variant: its scored latents with explanation and scores
    {variant}/layer{L}/latent{i}.html one latent: explanation, scores, windows, histogram, tokens, logits
    {variant}/layer{L}/latent{i}.json the same latent as Neuronpedia-style feature JSON

Files are rewritten in place, each atomically; the caller removes what an earlier report left behind.

The activation histogram is a hand-drawn inline SVG rather than a matplotlib PNG: a report has a thousand
or more of them and matplotlib takes ~70 ms per figure on two cores, which alone would break the report's
30-second budget.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from randsae.atomic import write_text_atomic
from randsae.report.latent_data import LatentView, TokenWeight, Window
from randsae.report.neuronpedia import feature_json
from randsae.report.page import definition_list, note, render_page
from randsae.report.tables import Column, format_value, html_table, variant_chip

IDENTITY_COLUMNS = ("variant", "layer", "latent")
SHOWN_APART = ("n_activations", "max_activation")
"""Interp-table columns the page states in its own words (firing count, max activation)."""
HIGHLIGHT_RGB = "230,126,34"
LAYER_PAGE_SCORES = {"fuzz_auroc": "fuzz", "detection_auroc": "detect"}
"""Interp-table columns shown per latent on the side-by-side layer pages (short headers: four variants
share the width)."""


def latent_path(variant: str, layer: int, latent: int) -> str:
    """Path of a latent page relative to the dashboards folder."""
    return f"{variant}/layer{layer}/latent{latent}.html"


def score_columns(views: Sequence[LatentView]) -> list[str]:
    """The interp table's numeric columns, in its order (AUROCs, entropy, ...)."""
    first = views[0].scores if views else {}
    return [
        key
        for key, value in first.items()
        if key not in IDENTITY_COLUMNS + SHOWN_APART and isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


@functools.lru_cache(maxsize=1 << 16)
def token_html(token: str) -> str:
    """A token's escaped display text, newlines shown as arrows (memoized: pages repeat tokens a lot)."""
    return html.escape(token.replace("\n", "\u21b5"))


def render_window(window: Window, scale: float) -> str:
    """A window as text, each active token shaded by its activation relative to the latent's max."""
    parts = [f'<span class="max">{window.max_activation:.3g}</span>']
    for token, value in zip(window.tokens, window.activations, strict=True):
        text = token_html(token)
        if value > 0:
            alpha = min(1.0, value / scale) if scale > 0 else 1.0
            parts.append(
                f'<span class="tok" style="background:rgba({HIGHLIGHT_RGB},{alpha:.2f})" '
                f'title="{value:.4g}">{text}</span>'
            )
        else:
            parts.append(text)
    return '<div class="window">' + "".join(parts) + "</div>"


def histogram_svg(counts: Sequence[int], edges: Sequence[float], label: str) -> str:
    """Bars of an activation histogram as inline SVG, with the value range and the tallest count marked."""
    width, height, top, bottom = 320, 130, 14, 18
    tallest = max(counts, default=0) or 1
    bar = width / max(len(counts), 1)
    plot_height = height - top - bottom
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{top + plot_height * (1 - c / tallest):.1f}" width="{max(bar - 1, 0.5):.1f}" '
        f'height="{plot_height * c / tallest:.1f}"><title>{lo:.3g}–{hi:.3g}: {c}</title></rect>'
        for i, (c, lo, hi) in enumerate(zip(counts, edges[:-1], edges[1:], strict=True))
    )
    axis = (
        f'<text x="0" y="{height - 4}" font-size="10">{edges[0]:.3g}</text>'
        f'<text x="{width}" y="{height - 4}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>'
        f'<text x="0" y="10" font-size="10">max count {max(counts, default=0)}</text>'
    )
    return (
        f'<svg class="histogram" role="img" aria-label="{html.escape(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">{bars}{axis}</svg>'
    )


def _token_table(title: str, weights: Sequence[TokenWeight] | None, value_label: str, spec: str) -> str:
    if weights is None:
        return ""
    rows = "".join(
        f"<tr><td><code>{html.escape(repr(w.token))}</code></td><td>{format(w.value, spec)}</td></tr>" for w in weights
    )
    return (
        f"<div><h3>{html.escape(title)}</h3><table><thead><tr><th>token</th><th>{value_label}</th></tr>"
        f"</thead><tbody>{rows}</tbody></table></div>"
    )


def latent_page(view: LatentView, variants: Sequence[str], colors: Mapping[str, str]) -> str:
    """The HTML of one latent's dashboard (links are relative to its own folder)."""
    others = " ".join(
        f'<a href="../../layer{view.layer}.html#{html.escape(v)}">{variant_chip(v, colors)}</a>'
        for v in variants
        if v != view.variant
    )
    nav = (
        f'<nav><a href="../../../report.html">report</a><a href="../../index.html">all dashboards</a>'
        f'<a href="../../layer{view.layer}.html">layer {view.layer}, all variants</a>'
        f"other variants at this layer: {others}</nav>"
    )
    stats = [
        (key, format_value(value, "d" if isinstance(value, int) else ".3f"))
        for key in score_columns([view])
        for value in [view.scores[key]]
    ]
    stats += [
        ("fires on", f"{view.n_firing} of {view.n_tokens} held-out tokens ({view.firing_rate:.3%})"),
        ("max activation", f"{view.max_activation:.4g}"),
    ]
    explanation = (
        f"<p><b>Explanation:</b> {html.escape(view.explanation)}</p>"
        if view.explanation is not None
        else note("No explanation was written for this latent.")
    )
    top = "".join(render_window(w, view.max_activation) for w in view.top_windows)
    quantiles = "".join(
        f"<h3>Ranks {g.first_rank}–{g.last_rank} (window max {g.min_max_activation:.3g}–{g.max_max_activation:.3g})"
        f"</h3>" + "".join(render_window(w, view.max_activation) for w in g.windows)
        for g in view.quantiles
    )
    logits = _token_table("Top promoted logits", view.promoted_logits, "logit", ".3f") + _token_table(
        "Most suppressed logits", view.suppressed_logits, "logit", ".3f"
    )
    body = (
        f"{nav}<h1>{variant_chip(view.variant, colors)} · layer {view.layer} · latent {view.latent}</h1>"
        f"{explanation}{definition_list(stats)}"
        f'<div class="columns"><div><h3>Activation histogram (nonzero values)</h3>'
        f"{histogram_svg(view.histogram_counts, view.histogram_edges, 'activation histogram')}</div>"
        f"{_token_table('Top tokens by activation mass', view.top_tokens, 'share', '.1%')}{logits}</div>"
        f"<h2>Top-activating windows</h2>{top}<h2>Windows from each rank quantile of active windows</h2>"
        f'{quantiles}<p><a href="latent{view.latent}.json">Neuronpedia-style feature JSON</a></p>'
    )
    return render_page(f"{view.variant} layer {view.layer} latent {view.latent}", body)


def layer_page(layer: int, views: Mapping[str, Sequence[LatentView]], colors: Mapping[str, str]) -> str:
    """Every variant's scored latents at one layer, side by side."""
    columns = []
    for variant, latents in views.items():
        scores = [key for key in LAYER_PAGE_SCORES if key in score_columns(latents)]
        table_columns = [
            Column("latent", "latent"),
            Column("explanation", "explanation"),
            *(Column(key, LAYER_PAGE_SCORES[key], ".2f") for key in scores),
        ]
        rows = [
            {
                "latent": v.latent,
                "explanation": v.explanation or "",
                **{k: v.scores[k] for k in scores},
                "href": latent_path(variant, layer, v.latent),
            }
            for v in latents
        ]
        table = html_table(
            table_columns,
            rows,
            table_id=f"latents-{variant}",
            cell_html={
                "latent": lambda row: f'<a href="{html.escape(row["href"])}">{row["latent"]}</a>',
                "explanation": lambda row: html.escape(_shorten(row["explanation"], 60)),
            },
        )
        columns.append(f'<div id="{html.escape(variant)}"><h2>{variant_chip(variant, colors)}</h2>{table}</div>')
    body = (
        f'<nav><a href="../report.html">report</a><a href="index.html">all dashboards</a></nav>'
        f'<h1>Layer {layer}: scored latents of every variant</h1><div class="columns">{"".join(columns)}</div>'
    )
    return render_page(f"layer {layer} latents", body)


def index_page(
    views: Mapping[tuple[str, int], Sequence[LatentView]],
    variants: Sequence[str],
    colors: Mapping[str, str],
    notes: Sequence[str],
) -> str:
    layers = sorted({layer for _, layer in views})
    head = "".join(f"<th>{variant_chip(v, colors)}</th>" for v in variants)
    rows = "".join(
        f'<tr><td><a href="layer{layer}.html">layer {layer}</a></td>'
        + "".join(f"<td>{len(views.get((v, layer), ()))}</td>" for v in variants)
        + "</tr>"
        for layer in layers
    )
    body = (
        '<nav><a href="../report.html">report</a></nav><h1>Latent dashboards</h1>'
        + "".join(note(text) for text in notes)
        + f"<p>Scored latents per variant and layer:</p><table><thead><tr><th>layer</th>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return render_page("latent dashboards", body)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_dashboards(
    folder: Path,
    views: Mapping[tuple[str, int], Sequence[LatentView]],
    variants: Sequence[str],
    colors: Mapping[str, str],
    notes: Sequence[str],
    model_name: str,
    judge: str | None,
) -> set[Path]:
    """Write every page and feature JSON (each file atomically); returns the paths written."""
    pages: dict[Path, str] = {}
    for (variant, layer), latents in views.items():
        for view in latents:
            path = folder / latent_path(variant, layer, view.latent)
            pages[path] = latent_page(view, variants, colors)
            pages[path.with_suffix(".json")] = json.dumps(feature_json(view, model_name, judge), allow_nan=False)
    for layer in sorted({layer for _, layer in views}):
        by_variant = {v: views[(v, layer)] for v in variants if (v, layer) in views}
        pages[folder / f"layer{layer}.html"] = layer_page(layer, by_variant, colors)
    pages[folder / "index.html"] = index_page(views, variants, colors, notes)
    for path, text in pages.items():
        write_text_atomic(path, text)
    return set(pages)
