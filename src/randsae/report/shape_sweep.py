"""`write_shape_sweep_report`: a run that sweeps SAE shapes (`sae_sweep`) in, `report.html` out.

The page asks whether the trained-vs-random verdict is the SAE's or the model's: per SAE shape (architecture,
width, sparsity), how many measurements separate trained from each random variant; the verdict matrix (each
measurement's trained-minus-variant difference pooled over layers, with its paired interval, one column per
shape); each measurement's gap against the SAE's width, one line per architecture and sparsity (the paper's
Figure 18); and a short section per shape. Each shape's part is a whole run directory, so
`randsae report RUN/shapes/{label}` gives that shape's full report with dashboards.
"""

from __future__ import annotations

import html
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from randsae.analysis.verdict import VerdictRow, layer_side
from randsae.atomic import write_text_atomic
from randsae.errors import UserError
from randsae.report import plots
from randsae.report.page import definition_list, figure, note, render_page
from randsae.report.palette import variant_colors
from randsae.report.report import metric_panels
from randsae.report.run_inputs import RunInputs, read_run
from randsae.report.sweep import part_summary
from randsae.report.tables import Column, html_table
from randsae.run_dir import RunDir
from randsae.sae_sweep import SweepShape, shape_sweep_of_run

MARKS = {1: "separates", -1: "other way", 0: "no"}
"""A pooled difference's side (`layer_side`): its 95% interval above 0 on the measurement's side, on the
other, or neither."""


def series_label(shape: SweepShape) -> str:
    """A shape's line on the width plot: its label without the width (`topk-x16-k32` → `topk-k32`)."""
    expansion = f"-x{shape.config.sae.expansion}"
    return shape.label.replace(expansion, "", 1) if expansion in shape.label else shape.label


def write_shape_sweep_report(run_dir: RunDir | Path, *, progress: bool = True) -> Path:
    """Write RUN/report.html of a run that sweeps SAE shapes; returns its path."""
    start = time.perf_counter()
    run = RunDir.at(run_dir)
    sweep = shape_sweep_of_run(run)
    if sweep is None:
        raise UserError(f"{run.root} does not sweep SAE shapes", f"Run `randsae report {run.root}` instead")
    inputs: dict[str, RunInputs] = {}
    notes = []
    for shape in sweep.shapes:
        try:
            inputs[shape.label] = read_run(run.shape_run(shape.label))
        except UserError as error:
            notes.append(f"SAE shape {shape.label} left out: {error}")
    if not inputs:
        raise UserError(f"no SAE shape of {run.root} has results yet", f"Run `randsae run` with --out {run.root}")
    body = _body(run, sweep.shapes, inputs, notes)
    write_text_atomic(run.report, render_page(f"randsae report: {len(sweep.shapes)} SAE shapes", body))
    if progress:
        print(f"report: {run.report} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return run.report


def _body(run: RunDir, shapes: Sequence[SweepShape], inputs: Mapping[str, RunInputs], notes: list[str]) -> str:
    shown = [shape for shape in shapes if shape.label in inputs]
    verdicts = {label: part.analysis.verdict if part.analysis else () for label, part in inputs.items()}
    randoms = list(dict.fromkeys(row.variant for rows in verdicts.values() for row in rows))
    variants = list(dict.fromkeys(v for part in inputs.values() for v in part.variants))
    colors = variant_colors(variants)
    sections = [
        f"<h1>randsae report: {len(shapes)} SAE shapes</h1>",
        '<nav><a href="#shapes">shapes</a><a href="#matrix">verdict per shape</a>'
        '<a href="#width">gap against width</a><a href="#parts">each shape</a></nav>',
        *(note(text, warning=True) for text in notes),
        '<h2 id="shapes">SAE shapes</h2>',
        "<p>Each shape is trained on every variant and layer from the same activations. <em>Separates</em> counts "
        "the measurements whose trained-minus-variant difference, pooled over layers, has its 95% interval on the "
        "measurement's side of 0 (docs/analysis.md).</p>",
        _shapes_table(shown, inputs, verdicts, randoms),
        '<h2 id="matrix">Verdict per shape</h2>',
        "<p>Trained minus the variant, pooled over layers (and replicates), with its paired 95% interval; "
        "<em>separates</em>: the interval lies on the measurement's side of 0; <em>other way</em>: on the "
        "other side. Hover a cell for the reading over layers.</p>",
        *_matrices(shown, verdicts, randoms, colors),
        '<h2 id="width">Trained minus random, against the SAE\'s width</h2>',
        *_width_figure(shown, verdicts, randoms, inputs),
        '<h2 id="parts">Each shape</h2>',
    ]
    for shape in shapes:
        sections.append(f'<h3 id="shape-{html.escape(shape.label)}">{html.escape(shape.label)}</h3>')
        sections.append(definition_list(_facts(run, shape, inputs.get(shape.label))))
        part = inputs.get(shape.label)
        if part is not None:
            sections += part_summary(run, part.run, part, metric_panels(part), colors, shape.label)
    return "\n".join(sections)


def _facts(run: RunDir, shape: SweepShape, part: RunInputs | None) -> list[tuple[str, str]]:
    sae = shape.config.sae
    sparsity = {"k": sae.k, "L1 coefficient": sae.l1_coefficient, "L0 coefficient": sae.l0_coefficient}
    facts = [("architecture", sae.architecture), ("expansion", str(sae.expansion))]
    facts += [(name, f"{value:g}") for name, value in sparsity.items() if value is not None]
    if part is not None and part.metrics:
        facts.append(("latents", f"{part.metrics[0].d_sae:,}"))
    facts.append(("folder", str(run.shape_run(shape.label).root.relative_to(run.root))))
    return facts


def _shapes_table(
    shapes: Sequence[SweepShape],
    inputs: Mapping[str, RunInputs],
    verdicts: Mapping[str, Sequence[VerdictRow]],
    randoms: Sequence[str],
) -> str:
    columns = [
        Column("shape", "shape"),
        Column("architecture", "architecture"),
        Column("d_sae", "latents", "d"),
        Column("l0", "L0", ".1f", "mean over the shape's SAEs of every variant"),
        *(Column(v, f"separates from {v}", "", "measurements separating / measured") for v in randoms),
    ]
    rows = []
    for shape in shapes:
        part = inputs[shape.label]
        row: dict[str, object] = {
            "shape": shape.label,
            "architecture": shape.config.sae.architecture,
            "d_sae": part.metrics[0].d_sae,
            "l0": sum(m.l0 for m in part.metrics) / len(part.metrics),
        }
        for variant in randoms:
            mine = [r for r in verdicts[shape.label] if r.variant == variant and math.isfinite(r.difference)]
            if mine:
                row[variant] = f"{sum(layer_side(r) == 1 for r in mine)} / {len(mine)}"
        rows.append(row)
    return html_table(columns, rows, table_id="shapes")


def _matrices(
    shapes: Sequence[SweepShape],
    verdicts: Mapping[str, Sequence[VerdictRow]],
    randoms: Sequence[str],
    colors: Mapping[str, str],
) -> list[str]:
    """One table per random variant: a row per measurement, a column per shape."""
    out = []
    for variant in randoms:
        cells = {(row.metric, s.label): row for s in shapes for row in verdicts[s.label] if row.variant == variant}
        metrics = list(dict.fromkeys(metric for metric, _ in cells))
        columns = [Column("metric", "measurement"), *(Column(shape.label, shape.label) for shape in shapes)]
        rows = [{"metric": metric, **{s.label: cells.get((metric, s.label)) for s in shapes}} for metric in metrics]
        render = {shape.label: _cell(shape.label) for shape in shapes}
        out += [
            f'<h3><span class="chip" style="background:{colors.get(variant, "#000")}"></span>'
            f"trained − {html.escape(variant)}</h3>",
            html_table(columns, rows, table_id=f"matrix-{variant}", cell_html=render),
        ]
    return out or [note("No shape has a verdict yet: run `randsae analyze` on the run.")]


def _cell(label: str):
    def render(row: Mapping[str, object]) -> str:
        verdict = row.get(label)
        if not isinstance(verdict, VerdictRow) or math.isnan(verdict.difference):
            return "–"
        interval = "" if math.isnan(verdict.ci_low) else f" [{verdict.ci_low:+.3f}, {verdict.ci_high:+.3f}]"
        mark = MARKS[layer_side(verdict)]
        return (
            f'<span title="{html.escape(verdict.reading)}">{verdict.difference:+.3f}{interval} '
            f"<em>{html.escape(mark)}</em></span>"
        )

    return render


def _width_figure(
    shapes: Sequence[SweepShape],
    verdicts: Mapping[str, Sequence[VerdictRow]],
    randoms: Sequence[str],
    inputs: Mapping[str, RunInputs],
) -> list[str]:
    """The pooled difference against d_sae, a line per architecture and sparsity, for the first random variant
    (the matrices above have every variant)."""
    widths = {shape.label: inputs[shape.label].metrics[0].d_sae for shape in shapes}
    if not randoms or len(set(widths.values())) < 2:
        return [note("The shapes have one width (or no verdict): nothing to plot against width.")]
    variant = randoms[0]
    panels: dict[str, dict[str, list[plots.SizePoint]]] = {}
    for shape in shapes:
        for row in verdicts[shape.label]:
            if row.variant == variant:
                point = plots.SizePoint(widths[shape.label], shape.label, row.difference, row.ci_low, row.ci_high)
                panels.setdefault(row.metric, {}).setdefault(series_label(shape), []).append(point)
    colors = variant_colors(list(dict.fromkeys(series for lines in panels.values() for series in lines)))
    return [
        f"<p>Trained minus {html.escape(variant)}, pooled over layers, against the SAE's latents; a bar spans the "
        "paired 95% interval. One line per architecture and sparsity.</p>",
        figure(plots.gap_vs_size(panels, colors, "SAE latents", lambda n: f"{n:,}"), "gap against SAE width"),
    ]
