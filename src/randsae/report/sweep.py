"""`write_sweep_report`: a multi-model run (`model_sweep`) in, `report.html` out.

The page is the paper's Figure 2 as a models × measurements grid (each measurement against layer, one line per
variant), each measurement's trained-minus-variant gap against model size, and one short section per model:
its size and layers, its measurements averaged over layers, and its verdict. Each model's part is a whole run
directory, so `randsae report RUN/models/{label}` gives that model's full report with dashboards.
"""

from __future__ import annotations

import html
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from randsae.atomic import write_text_atomic
from randsae.errors import UserError
from randsae.model_sweep import ModelOutcome, load_outcomes
from randsae.report import plots
from randsae.report.page import definition_list, figure, note, render_page
from randsae.report.palette import variant_colors
from randsae.report.report import VERDICT_COLUMNS, metric_panels
from randsae.report.run_inputs import RunInputs, as_row, read_run
from randsae.report.tables import Column, html_table, variant_chip
from randsae.run_dir import RunDir


def layer_mean_gap(trained: Sequence[plots.Point], other: Sequence[plots.Point]) -> tuple[float, float, float] | None:
    """(gap, low, high): trained minus the variant, averaged over the layers both have; low and high take the
    variant's highest and lowest replicate (or interval end) at each layer instead of its mean. None without a
    common layer."""
    by_layer = {point.layer: point for point in trained}
    pairs = [(by_layer[point.layer], point) for point in other if point.layer in by_layer]
    if not pairs:
        return None
    gap = float(np.mean([t.value - o.value for t, o in pairs]))
    if not all(math.isfinite(o.low) and math.isfinite(o.high) for _, o in pairs):
        return gap, math.nan, math.nan
    low = float(np.mean([t.value - o.high for t, o in pairs]))
    return gap, low, float(np.mean([t.value - o.low for t, o in pairs]))


def gap_points(
    panels: Mapping[str, Sequence[plots.Panel]], sizes: Mapping[str, int]
) -> dict[str, dict[str, list[plots.SizePoint]]]:
    """measurement -> variant -> one point per model (`panels`: model label -> its panels) that has trained and
    that variant; measurements whose values mean nothing for random variants (dashed) are left out."""
    out: dict[str, dict[str, list[plots.SizePoint]]] = {}
    for label, model_panels in panels.items():
        for panel in model_panels:
            trained = panel.series.get("trained")
            if trained is None:
                continue
            for variant, points in panel.series.items():
                gap = None if variant == "trained" or variant in panel.dashed else layer_mean_gap(trained, points)
                if gap is not None:
                    point = plots.SizePoint(sizes[label], label, *gap)
                    out.setdefault(panel.title, {}).setdefault(variant, []).append(point)
    return out


def write_sweep_report(run_dir: RunDir | Path, *, progress: bool = True) -> Path:
    """Write RUN/report.html of a multi-model run; returns its path."""
    start = time.perf_counter()
    run = RunDir.at(run_dir)
    outcomes = load_outcomes(run)
    if not outcomes:
        raise UserError(f"{run.models_json} is missing", f"Run `randsae run --config {run.config} --out {run.root}`")
    inputs: dict[str, RunInputs] = {}
    notes = []
    for outcome in outcomes:
        if outcome.status == "done":
            try:
                inputs[outcome.label] = read_run(run.model_run(outcome.label))
            except UserError as error:
                notes.append(f"model {outcome.label} left out: {error}")
    body = _body(run, outcomes, inputs, notes)
    write_text_atomic(run.report, render_page(f"randsae report: {len(outcomes)} models", body))
    if progress:
        print(f"report: {run.report} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return run.report


def _body(run: RunDir, outcomes: Sequence[ModelOutcome], inputs: Mapping[str, RunInputs], notes: list[str]) -> str:
    variants = list(dict.fromkeys(v for model in inputs.values() for v in model.variants))
    colors = variant_colors(variants)
    sizes = {o.label: o.n_parameters for o in outcomes if o.label in inputs and o.n_parameters is not None}
    panels = {label: metric_panels(model) for label, model in inputs.items() if label in sizes}
    sections = [
        f"<h1>randsae report: {len(outcomes)} models</h1>",
        '<nav><a href="#grid">models × measurements</a><a href="#size">gap against size</a>'
        '<a href="#models">models</a></nav>',
        *(note(text, warning=True) for text in notes),
        *(note(f"model {o.label} failed: {o.error}", warning=True) for o in outcomes if o.status == "failed"),
        '<h2 id="grid">Measurements by layer, per model (the paper\'s Figure 2)</h2>',
    ]
    rows = list(dict.fromkeys(panel.title for model_panels in panels.values() for panel in model_panels))
    titles = {f"{label} ({plots.parameter_count(sizes[label])})": shown for label, shown in panels.items()}
    sections.append(
        figure(plots.model_metric_grid(titles, rows, colors), "measurements against layer, one column per model")
        if rows
        else note("No model has results to plot yet.")
    )
    sections.append('<h2 id="size">Trained minus random, against model size</h2>')
    gaps = gap_points(panels, sizes)
    sections += (
        [
            "<p>Each measurement's gap, trained minus the variant, averaged over each model's layers, against the "
            "trained model's parameters. A bar spans the gap against the variant's lowest and highest replicate "
            "(or interval end) at each layer, where it has several. Above zero: trained scores higher.</p>",
            figure(plots.gap_vs_size(gaps, colors), "trained-minus-variant gap against model parameters"),
        ]
        if gaps
        else [note("No model has both trained and a random variant measured.")]
    )
    sections.append('<h2 id="models">Models</h2>')
    for outcome in outcomes:
        sections += _model_section(run, outcome, inputs.get(outcome.label), panels.get(outcome.label, []), colors)
    return "\n".join(sections)


def _model_section(
    run: RunDir,
    outcome: ModelOutcome,
    model: RunInputs | None,
    panels: Sequence[plots.Panel],
    colors: Mapping[str, str],
) -> list[str]:
    folder = run.model_run(outcome.label)
    out = [f'<h3 id="model-{html.escape(outcome.label)}">{html.escape(outcome.label)}</h3>']
    facts = [("model", outcome.name), ("status", outcome.status if not outcome.error else f"failed: {outcome.error}")]
    if outcome.n_parameters is not None:
        facts.append(("parameters", f"{outcome.n_parameters:,}"))
    if outcome.layers:
        facts.append(("layers", f"{', '.join(map(str, outcome.layers))} of {outcome.n_blocks} blocks"))
    facts.append(("folder", str(folder.root.relative_to(run.root))))
    out.append(definition_list(facts))
    return out if model is None else out + part_summary(run, folder, model, panels, colors, outcome.label)


def part_summary(
    run: RunDir, folder: RunDir, part: RunInputs, panels: Sequence[plots.Panel], colors: Mapping[str, str], label: str
) -> list[str]:
    """A sweep part's (one model's or SAE shape's) link to its own report, its measurements averaged over
    layers per variant, and its verdict."""
    own_report = folder.report
    out = [
        f'<p>Full report with dashboards: <a href="{own_report.relative_to(run.root)}">{own_report.name}</a></p>'
        if own_report.is_file()
        else f"<p>Its full report with dashboards: <code>randsae report {html.escape(str(folder.root))}</code></p>"
    ]
    columns = [Column("variant", "variant"), *(Column(p.title, p.title, ".3f") for p in panels)]
    rows = []
    for variant in part.variants:
        row: dict[str, object] = {"variant": variant}
        for panel in panels:
            points = panel.series.get(variant, [])
            if points:
                row[panel.title] = float(np.mean([point.value for point in points]))
        rows.append(row)
    chip = {"variant": lambda row: variant_chip(str(row["variant"]), colors)}
    means = html_table(columns, rows, table_id=f"means-{label}", cell_html=chip)
    out += ["<p>Mean over layers (and replicates):</p>", means]
    if part.analysis and part.analysis.verdict:
        verdict = [
            {**as_row(r), "replicates": f"{r.n_trained_replicates} / {r.n_other_replicates}"}
            for r in part.analysis.verdict
        ]
        table = html_table(VERDICT_COLUMNS, verdict, table_id=f"verdict-{label}", cell_html=chip)
        out += ["<p>Verdict: trained against each variant, pooled over layers (docs/analysis.md):</p>", table]
    return out
