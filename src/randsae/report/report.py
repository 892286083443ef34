"""`write_report`: a run directory in, `report.html` and `dashboards/` out.

The report puts the paper's figures for this run on one page (metric against layer per variant, ROC
curves, token entropy against AUROC), the variant x layer tables, and a header saying exactly what was
run. Missing optional stages (interp, analysis) become visible notes, not errors.
"""

from __future__ import annotations

import html
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from randsae.atomic import write_text_atomic
from randsae.interp.outputs import read_scores
from randsae.interp.statistics import FAILED_PROBABILITY
from randsae.interp.summary import UNCALIBRATED_JUDGE, SAEInterp
from randsae.metrics.results import NOT_MEANINGFUL
from randsae.models.load import display_name
from randsae.report import plots
from randsae.report.dashboards import write_dashboards
from randsae.report.latent_data import collect_latent_views
from randsae.report.page import figure, note, render_page
from randsae.report.palette import variant_colors
from randsae.report.run_header import run_header
from randsae.report.run_inputs import RunInputs, as_row, read_run
from randsae.report.tables import Column, format_value, html_table, present_columns, variant_chip
from randsae.run_dir import RunDir, SAEKey

MAX_ROC_LAYERS = 6
TASK_TITLES = {"fuzz": "fuzzing", "detection": "detection"}

QUALITY_COLUMNS = (
    Column("explained_variance_pooled", "EV pooled", ".3f", "1 - sum|x - x_hat|^2 / sum|x - mean|^2"),
    Column("explained_variance_per_token", "EV per-token", ".3f", "mean over tokens of per-token explained variance"),
    Column("mse", "MSE", ".4g"),
    Column("cosine", "cosine", ".3f"),
    Column("l0", "L0", ".1f"),
    Column("l1", "L1", ".3g"),
    Column("dead_fraction", "dead", ".3f"),
    Column("dense_fraction", "dense", ".3f"),
    Column("ce_loss_score", "CE score", ".3f", "(CE_zero - CE_sae) / (CE_zero - CE_clean)"),
    Column("kl_score", "KL score", ".3f"),
    Column("ce_clean", "CE clean", ".3f"),
    Column("ce_zero", "CE zero", ".3f"),
    Column("ce_sae", "CE SAE", ".3f"),
    Column("meaningful_downstream", "CE meaningful", "", "false except for trained (no language model predicts)"),
    Column("n_eval_tokens", "eval tokens", "d"),
    Column("converged", "converged", "", "held-out EV changed by under train.converged_below over the last quarter"),
    Column("ev_change_last_quarter", "EV change, last quarter", "+.3f", "(EV(end) - EV(75%)) / |EV(end)|, held out"),
)
ANALYSIS_COLUMNS = (
    Column("single_token_fraction", "single-token", ".3f"),
    Column("positional_fraction", "positional", ".3f"),
    Column("mean_top_token_share", "top-token share", ".3f"),
    Column("mean_positional_r2", "positional R²", ".3f"),
    Column("mean_context_dependence", "context dep.", ".3f"),
    Column("lookup_ev", "lookup EV", ".3f"),
    Column("sae_ev", "SAE EV", ".3f"),
    Column("sae_ev_beyond_lookup", "SAE EV beyond lookup", ".3f"),
    Column("fuzz_auroc", "fuzz AUROC (mean per latent)", ".3f"),
    Column("detection_auroc", "detect AUROC (mean per latent)", ".3f"),
    Column("fuzz_auroc_single_token", "fuzz AUROC single-token", ".3f"),
    Column("fuzz_auroc_contextual", "fuzz AUROC contextual", ".3f"),
    Column("detection_auroc_single_token", "detect AUROC single-token", ".3f"),
    Column("detection_auroc_contextual", "detect AUROC contextual", ".3f"),
    Column("seed_stable_share", "seed-stable share", ".3f"),
    Column("n_alive", "alive", "d"),
    Column("n_rows", "rows", "d"),
)
SEPARATION_COLUMNS = (
    Column("metric", "metric"),
    Column("variant", "variant"),
    Column("layer", "layer"),
    Column("trained", "trained", ".3f"),
    Column("other", "variant value", ".3f"),
    Column("difference", "trained − variant", "+.3f"),
    Column("ci_low", "CI low", "+.3f"),
    Column("ci_high", "CI high", "+.3f"),
    Column("effect", "effect", "+.2f", "(trained − variant) / bootstrap SE of the paired difference"),
    Column("p_value", "p", ".2g", "two-sided rank test: Mann-Whitney U on latents, Wilcoxon on paired sequences"),
    Column("n_units", "paired units", "d", "frequency bins of latents, or held-out sequences"),
    Column("n_trained_replicates", "trained reps", "d"),
    Column("n_other_replicates", "variant reps", "d"),
)
VERDICT_COLUMNS = (
    Column("metric", "measurement"),
    Column("variant", "variant"),
    Column("trained", "trained", ".3f"),
    Column("other", "variant value", ".3f"),
    Column("difference", "trained − variant", "+.3f", "mean over layers and replicates"),
    Column("ci_low", "CI low", "+.3f", "paired bootstrap 95% interval; – where too few units"),
    Column("ci_high", "CI high", "+.3f"),
    Column("n_units", "paired units", "d", "frequency bins of latents, or held-out sequences, over layers"),
    Column("replicates", "replicates", "", "SAEs per layer: trained / variant (resampled from 3 on)"),
    Column("p_value", "p", ".2g", "two-sided rank test"),
    Column("reading", "reading"),
)
SPREAD_COLUMNS = (
    Column("metric", "measurement"),
    Column("variant", "variant"),
    Column("layer", "layer"),
    Column("n", "replicates", "d"),
    Column("mean", "mean", ".3f"),
    Column("minimum", "min", ".3f"),
    Column("maximum", "max", ".3f"),
    Column("ci_low", "CI low", ".3f", "95% t interval of the mean over replicates (from 3 replicates)"),
    Column("ci_high", "CI high", ".3f"),
)


def write_report(run_dir: RunDir | Path, *, progress: bool = True, device: str | torch.device = "cpu") -> Path:
    """Write RUN/report.html and RUN/dashboards/; returns the report's path. `device` computes the logit effects."""
    start = time.perf_counter()
    run = read_run(RunDir.at(run_dir))
    colors = variant_colors(run.variants)
    latent_views = collect_latent_views(run, progress, device)
    folder = run.run.dashboards
    written = write_dashboards(
        folder,
        latent_views.views,
        run.variants,
        colors,
        latent_views.notes,
        run.config.model.name if run.config else "",
        _judge(run),
    )
    _remove_stale_files(folder, written)
    n_pages = sum(len(latents) for latents in latent_views.views.values())
    body = _report_body(run, colors, latent_views.notes, n_pages, sorted({layer for _, layer in latent_views.views}))
    report = run.run.report
    write_text_atomic(report, render_page(f"randsae report: {_model_name(run)}", body))
    if progress:
        print(
            f"report: {report} and {n_pages} latent dashboards in {time.perf_counter() - start:.1f} s", file=sys.stderr
        )
    return report


def _remove_stale_files(folder: Path, written: set[Path]) -> None:
    """Delete what an earlier report left in `folder` and this one did not rewrite (pages of latents no
    longer scored), so the folder holds exactly this report's dashboards. Files are rewritten in place
    (each atomically) rather than the folder replaced: deleting thousands of files is slow on some disks."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path not in written:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _model_name(run: RunInputs) -> str:
    return display_name(run.config.model.name) if run.config else run.run.root.name


def _judge(run: RunInputs) -> str | None:
    return run.interp.summary.saes[0].judge if run.interp and run.interp.summary.saes else None


def _report_body(
    run: RunInputs,
    colors: Mapping[str, str],
    dashboard_notes: Sequence[str],
    n_pages: int,
    dashboard_layers: Sequence[int],
) -> str:
    dashboards = run.run.dashboards.name
    sections = [
        f"<h1>randsae report: {html.escape(_model_name(run))}</h1>",
        '<nav><a href="#verdict">verdict</a><a href="#run">run</a><a href="#figure2">metrics by layer</a>'
        '<a href="#curves">learning curves</a>'
        '<a href="#roc">ROC</a><a href="#entropy">entropy vs AUROC</a><a href="#tables">tables</a>'
        f'<a href="{dashboards}/index.html">latent dashboards</a></nav>',
        *(note(text) for text in run.notes),
        *_verdict(run, colors),
        run_header(run, colors),
        *_imported(run),
        '<h2 id="figure2">Metrics by layer (the paper\'s Figure 2)</h2>',
    ]
    panels = _panels(run)
    sections.append(
        figure(plots.metric_grid(panels, colors), "metrics against layer, one line per variant")
        if panels
        else note("metrics.json has none of the plotted metrics.")
    )
    sections += _learning_curve_figure(run, colors)
    sections += _interp_figures(run, colors)
    sections += _tables(run, colors)
    sections.append(
        f'<h2 id="dashboards">Latent dashboards</h2><p>{n_pages} latent pages: '
        f'<a href="{dashboards}/index.html">index</a> · '
        + " · ".join(
            f'<a href="{dashboards}/layer{layer}.html">layer {layer}, all variants</a>' for layer in dashboard_layers
        )
        + "</p>"
    )
    sections += [note(text) for text in dashboard_notes]
    return "\n".join(sections)


def _verdict(run: RunInputs, colors: Mapping[str, str]) -> list[str]:
    """The verdict table, first thing on the page."""
    out = ['<h2 id="verdict">Verdict: does trained separate from each random variant?</h2>']
    if not run.analysis or not run.analysis.verdict:
        return [*out, note("No verdict: it needs analysis/verdict.json with a trained and another variant.")]
    rows = [
        {**as_row(r), "replicates": f"{r.n_trained_replicates} / {r.n_other_replicates}"} for r in run.analysis.verdict
    ]
    chip = {"variant": lambda row: variant_chip(str(row["variant"]), colors)}
    return [
        *out,
        "<p>Per measurement, trained minus each variant, pooled over layers: a paired bootstrap interval over "
        "the same units (latents matched by firing frequency, or the same held-out sequences) and over "
        "replicates, a rank-test p-value, and the reading over layers (docs/analysis.md).</p>",
        html_table(VERDICT_COLUMNS, rows, table_id="verdict", cell_html=chip),
    ]


def _imported(run: RunInputs) -> list[str]:
    """Where the SAEs imported by `randsae compare` came from; the random variants' SAEs were trained here with
    their shape."""
    if not run.origins:
        return []
    items = []
    for key, origin in sorted(run.origins.items(), key=lambda item: item[0].layer):
        conversions = f" Read with: {'; '.join(origin.conversions)}." if origin.conversions else ""
        items.append(
            f"<li>{html.escape(key.describe())}: {html.escape(origin.describe())}.{html.escape(conversions)}</li>"
        )
    return [
        '<h2 id="imported">Imported SAEs</h2>',
        "<p>These trained-model SAEs were trained elsewhere and read by <code>randsae compare</code>; every "
        "random variant's SAE was trained here with their architecture, width and k (ReLU SAEs: with the "
        "config's L1 penalty, so compare the L0 columns).</p>",
        f"<ul>{''.join(items)}</ul>",
    ]


def _series(rows: Iterable[Any], value, low=None, high=None) -> dict[str, list[plots.Point]]:
    """variant -> points, from result records with `variant` and `layer` and accessors for the numbers.

    Replicates (several records of one variant and layer) become one point, their mean, with a bar from the
    lowest to the highest replicate (or replicate interval end, when the records carry intervals)."""
    groups: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for row in rows:
        number = value(row)
        if number is None or (isinstance(number, float) and math.isnan(number)):
            continue
        ends = (_float(low(row) if low else None), _float(high(row) if high else None))
        groups.setdefault((str(row.variant), int(row.layer)), []).append((float(number), *ends))
    series: dict[str, list[plots.Point]] = {}
    for (variant, layer), found in sorted(groups.items(), key=lambda item: item[0][1]):
        values = np.array(found)
        if len(found) == 1:
            point = plots.Point(layer, *found[0])
        else:
            lows = values[:, 0] if low is None else values[:, 1]
            highs = values[:, 0] if high is None else values[:, 2]
            point = plots.Point(layer, float(values[:, 0].mean()), float(lows.min()), float(highs.max()))
        series.setdefault(variant, []).append(point)
    return series


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _panels(run: RunInputs) -> list[plots.Panel]:
    """The metric-vs-layer panels this run has data for, auto-interp first as in the paper."""
    panels = []
    saes = run.interp.summary.saes if run.interp else ()
    for task in ("fuzz", "detection"):
        panels.append(
            plots.Panel(
                f"{TASK_TITLES[task]} AUROC (95% CI)",
                _series(
                    saes,
                    lambda r, t=task: getattr(r, t).auroc,
                    lambda r, t=task: getattr(r, t).auroc_low,
                    lambda r, t=task: getattr(r, t).auroc_high,
                ),
            )
        )
    random_variants = frozenset(r.variant for r in run.metrics if not r.meaningful_downstream)
    panels += [
        plots.Panel("explained variance (pooled)", _series(run.metrics, attrgetter("explained_variance_pooled"))),
        plots.Panel("cosine(x, x̂)", _series(run.metrics, attrgetter("cosine"))),
        plots.Panel("L1 of latent activations", _series(run.metrics, attrgetter("l1"))),
        plots.Panel(
            "CE-loss score",
            _series(run.metrics, attrgetter("ce_loss_score")),
            random_variants,
            "dashed: not meaningful (no language model predicts)" if random_variants else "",
        ),
    ]
    panels.append(plots.Panel("token entropy (bits, mean)", _series(saes, lambda r: r.token_entropy.mean)))
    if run.analysis:
        panels += [
            plots.Panel(title, _series(run.analysis.saes, attrgetter(key)))
            for key, title in (
                ("single_token_fraction", "single-token latent fraction"),
                ("positional_fraction", "positional latent fraction"),
                ("lookup_ev", "token-lookup explained variance"),
                ("sae_ev_beyond_lookup", "SAE EV beyond the lookup"),
            )
        ]
    return [panel for panel in panels if panel.series]


def _learning_curve_figure(run: RunInputs, colors: Mapping[str, str]) -> list[str]:
    heading = '<h2 id="curves">Learning curves</h2>'
    if not run.learning_curves:
        return [heading, note("No SAE's training.json has a held-out learning curve (train.curve_points = 0?).")]
    curves: dict[int, list[plots.LearningCurve]] = {}
    for key, points in run.learning_curves.items():
        curve = plots.LearningCurve(key.variant, [p.tokens for p in points], [p.explained_variance for p in points])
        curves.setdefault(key.layer, []).append(curve)
    caption = (
        "held-out explained variance against training tokens, one line per SAE (thin: a variant's replicates); "
        "the converged column of the quality table compares the last point with the one at 75% of training"
    )
    return [heading, figure(plots.learning_curves(curves, colors), caption)]


def _interp_figures(run: RunInputs, colors: Mapping[str, str]) -> list[str]:
    if not run.interp or not run.interp.summary.latents:
        return [
            '<h2 id="roc">ROC curves</h2>',
            note(
                "No auto-interp results: ROC curves and the entropy plot need interp/*/latents.csv and the score files."
            ),
        ]
    layers = sorted({row.layer for row in run.interp.summary.latents})
    if len(layers) > MAX_ROC_LAYERS:
        layers = [layers[int(i)] for i in np.linspace(0, len(layers) - 1, MAX_ROC_LAYERS).round()]
    out = [
        '<h2 id="roc">ROC curves (the paper\'s Figure 1)</h2>',
        "<p>Every judged example of every scored latent of a variant, pooled; AUROC in the legend.</p>",
    ]
    for task in ("fuzz", "detection"):
        curves = _roc_curves(run, task, layers)
        if curves:
            out.append(figure(plots.roc_grid(curves, colors, TASK_TITLES[task]), f"{task} ROC curves"))
        else:
            out.append(note(f"No {TASK_TITLES[task]} score files under {run.interp.files.root}/scores/{task}/."))
    out.append('<h2 id="entropy">Token entropy against per-latent AUROC (the paper\'s Appendix H)</h2>')
    points = {}
    for variant in run.variants:
        rows = [r for r in run.interp.summary.latents if r.variant == variant]
        if rows:
            points[variant] = (
                np.array([r.token_entropy for r in rows], float),
                np.array([r.fuzz_auroc for r in rows], float),
            )
    if points:
        out.append(figure(plots.entropy_scatter(points, colors, "fuzzing"), "token entropy against fuzzing AUROC"))
    return out


def _roc_curves(run: RunInputs, task: str, layers: Sequence[int]) -> dict[int, dict[str, plots.RocCurve]]:
    """ROC of every (variant, layer) from its score files; failed examples score 0.5 as in the interp stage."""
    assert run.interp is not None
    files = run.interp.files
    curves: dict[int, dict[str, plots.RocCurve]] = {}
    for row_variant in run.variants:
        for layer in layers:
            labels, scores = [], []
            for row in run.interp.summary.latents:
                if row.variant != row_variant or row.layer != layer:
                    continue
                path = files.score(task, row.module, row.latent)
                if path.is_file():
                    for record in read_scores(path):
                        labels.append(record.activating)
                        scores.append(FAILED_PROBABILITY if record.failure else record.probability)
            if labels:
                curves.setdefault(layer, {})[row_variant] = plots.roc_curve(np.array(labels), np.array(scores))
    return curves


def _tables(run: RunInputs, colors: Mapping[str, str]) -> list[str]:
    chip = {"variant": lambda row: variant_chip(str(row["variant"]), colors)}
    ids = (Column("variant", "variant"), Column("layer", "layer"))
    out = ['<h2 id="tables">Tables</h2><p>Click a column header to sort.</p><h3>SAE quality (variant × layer)</h3>']
    metrics, metric_ids = _sae_rows(run.metrics)
    out.append(
        html_table(
            [*metric_ids, *present_columns(QUALITY_COLUMNS, metrics)],
            _ordered(run, metrics),
            table_id="quality",
            cell_html={**chip, **{key: _flagged_score(key) for key in ("ce_loss_score", "kl_score")}},
        )
    )
    if not all(row.meaningful_downstream for row in run.metrics):
        out.append(note(f"* {NOT_MEANINGFUL}"))
    if run.interp:
        rows = [_interp_row(sae) for sae in run.interp.summary.saes]
        interp_ids = [
            *ids,
            *([REPLICATE_LABEL] if any(sae.label != sae.variant for sae in run.interp.summary.saes) else []),
        ]
        flags = {c.key: _judge_flagged(c) for c in INTERP_COLUMNS if c.key.startswith(("fuzz_", "detection_"))}
        out += [
            "<h3>Auto-interpretability (variant × layer)</h3>",
            *([note(UNCALIBRATED_JUDGE, warning=True)] if run.interp.judge_failed else []),
            html_table(
                [*interp_ids, *INTERP_COLUMNS],
                _ordered(run, rows),
                table_id="interp",
                cell_html={**chip, **(flags if run.interp.judge_failed else {})},
            ),
        ]
        if run.interp.ablation:
            out += [
                "<h3>Explainer ablation: the same judge, LLM explanations against token lists</h3>",
                html_table(
                    [*interp_ids, *ABLATION_COLUMNS],
                    _ordered(run, [as_row(r) for r in run.interp.ablation]),
                    table_id="explainer-ablation",
                    cell_html=chip,
                ),
                note(
                    "A judge that scores token lists well but the LLM's explanations at chance points at the "
                    "explainer; one at chance with both points at the judge (see its calibration)."
                ),
            ]
    if run.analysis:
        analysed, analysed_ids = _sae_rows(run.analysis.saes)
        out += [
            "<h3>What separates trained from random (variant × layer)</h3>",
            html_table(
                [*analysed_ids, *present_columns(ANALYSIS_COLUMNS, analysed)],
                _ordered(run, analysed),
                table_id="analysis",
                cell_html=chip,
            ),
        ]
        pooled = [as_row(r) for r in run.analysis.separation if r.layer == "all"]
        per_layer = [as_row(r) for r in run.analysis.separation if r.layer != "all"]
        if run.analysis.replicates:
            spread = [as_row(r) for r in run.analysis.replicates]
            out += [
                "<h3>Spread over replicates (variant × layer; the tables above list every replicate)</h3>",
                html_table(SPREAD_COLUMNS, spread, table_id="replicates", cell_html=chip),
            ]
        out += [
            "<h3>Separation: trained against each variant, pooled over layers (best-separating first)</h3>",
            html_table(SEPARATION_COLUMNS, pooled, table_id="separation", cell_html=chip),
            "<details><summary>Per layer</summary>",
            html_table(SEPARATION_COLUMNS, per_layer, table_id="separation-layers", cell_html=chip),
            "</details>",
            *(note(text) for text in run.analysis.notes),
        ]
    return out


def _judge_flagged(column: Column) -> Callable[[Mapping[str, Any]], str]:
    """A score of a judge that failed calibration (AUROC, its CI, accuracy, F1), marked `!`."""

    def cell(row: Mapping[str, Any]) -> str:
        text = html.escape(format_value(row[column.key], column.format))
        return f'{text}<span title="not meaningful: the judge failed calibration">!</span>'

    return cell


def _flagged_score(key: str) -> Callable[[Mapping[str, Any]], str]:
    """A CE/KL score cell, marked `*` where the variant's predictions are not a language model's."""

    def cell(row: Mapping[str, Any]) -> str:
        text = html.escape(format_value(row[key], ".3f"))
        return text if row["meaningful_downstream"] else f'{text}<span title="not meaningful">*</span>'

    return cell


def _sae_rows(records: Sequence[Any]) -> tuple[list[dict[str, Any]], list[Column]]:
    """Table rows of per-SAE records (with `variant_seed` and `sae_seed`) and their identifying columns: variant,
    layer and, when the run has replicates, which replicate."""
    keys = [SAEKey(r.variant, r.layer, variant_seed=r.variant_seed, sae_seed=r.sae_seed) for r in records]
    rows = [{**as_row(r), "replicate": key.replicate} for r, key in zip(records, keys, strict=True)]
    ids = [Column("variant", "variant"), Column("layer", "layer")]
    if any(row["replicate"] for row in rows):
        ids.append(Column("replicate", "replicate", "", "random draw and SAE seed"))
    return rows, ids


INTERP_COLUMNS = (
    Column("fuzz_auroc", "fuzz AUROC", ".3f"),
    Column("fuzz_low", "fuzz CI low", ".3f"),
    Column("fuzz_high", "fuzz CI high", ".3f"),
    Column("fuzz_median", "fuzz median per latent", ".3f"),
    Column("detection_auroc", "detect AUROC", ".3f"),
    Column("detection_low", "detect CI low", ".3f"),
    Column("detection_high", "detect CI high", ".3f"),
    Column("fuzz_balanced_accuracy", "fuzz bal. acc.", ".3f"),
    Column("fuzz_f1", "fuzz F1", ".3f"),
    Column("token_entropy", "entropy (bits)", ".2f"),
    Column("n_eligible", "eligible", "d"),
    Column("n_sampled", "sampled", "d"),
    Column("n_dead", "dead", "d"),
    Column("n_failed", "failed examples", "d"),
    Column("probability_source", "probabilities from"),
    Column("distinct_share", "distinct explanations", ".0%"),
    Column("echo_share", "echo the prompt", ".0%"),
    Column("failed_share", "failed explanations", ".0%"),
    Column("median_words", "median words", ".1f"),
)


REPLICATE_LABEL = Column("label", "SAE", "", "the variant with its random draw and SAE seed")
ABLATION_COLUMNS = (
    Column("fuzz_llm", "fuzz AUROC, LLM explanations", ".3f"),
    Column("fuzz_token_list", "fuzz AUROC, token lists", ".3f"),
    Column("detection_llm", "detect AUROC, LLM explanations", ".3f"),
    Column("detection_token_list", "detect AUROC, token lists", ".3f"),
    Column("reading", "reading", "", "from non-overlapping 95% CIs of the pooled AUROCs"),
)


def _interp_row(sae: SAEInterp) -> dict[str, Any]:
    fuzz, detection = sae.fuzz, sae.detection
    return {
        "variant": sae.variant,
        "layer": sae.layer,
        "label": sae.label,
        "fuzz_auroc": fuzz.auroc,
        "fuzz_low": fuzz.auroc_low,
        "fuzz_high": fuzz.auroc_high,
        "fuzz_median": fuzz.latent_auroc.median,
        "detection_auroc": detection.auroc,
        "detection_low": detection.auroc_low,
        "detection_high": detection.auroc_high,
        "fuzz_balanced_accuracy": fuzz.balanced_accuracy,
        "fuzz_f1": fuzz.f1,
        "token_entropy": sae.token_entropy.mean,
        "n_eligible": sae.n_eligible,
        "n_sampled": sae.n_sampled,
        "n_dead": sae.n_dead,
        "n_failed": fuzz.n_failed + detection.n_failed,
        "probability_source": fuzz.probability_source,
        "distinct_share": None if sae.health is None else sae.health.distinct_share,
        "echo_share": None if sae.health is None else sae.health.echo_share,
        "failed_share": None if sae.health is None else sae.health.failed_share,
        "median_words": None if sae.health is None else sae.health.median_words,
    }


def _ordered(run: RunInputs, rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows in the run's variant order, then by layer."""
    rank = {variant: i for i, variant in enumerate(run.variants)}
    return sorted(rows, key=lambda row: (rank.get(str(row["variant"]), len(rank)), int(row["layer"])))
