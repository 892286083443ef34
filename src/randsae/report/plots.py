"""The report's figures, drawn with matplotlib and returned as base64 PNG data URIs to embed in the page.

Each function takes plain numbers (no run-directory knowledge) and the run's variant colours, so the
same variant has the same colour in every figure. Figures are built with `matplotlib.figure.Figure`
(no pyplot global state) on the Agg canvas.
"""

from __future__ import annotations

import base64
import io
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

DPI = 90


class Point(NamedTuple):
    """One value of a metric at one layer, with an optional 95% interval (NaN when there is none)."""

    layer: int
    value: float
    low: float = math.nan
    high: float = math.nan


class Panel(NamedTuple):
    """One small plot of the metric-vs-layer grid (the paper's Figure 2)."""

    title: str
    series: Mapping[str, Sequence[Point]]
    """variant -> its points, any layer order."""
    dashed: frozenset[str] = frozenset()
    """Variants drawn dashed: the value is reported but not meaningful for them."""
    note: str = ""
    """A short line under the title (e.g. why some lines are dashed)."""


class LearningCurve(NamedTuple):
    """One SAE's held-out explained variance after each measured number of training tokens."""

    variant: str
    tokens: Sequence[int]
    explained_variance: Sequence[float]


class RocCurve(NamedTuple):
    false_positive_rate: np.ndarray
    true_positive_rate: np.ndarray
    auroc: float


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> RocCurve:
    """ROC points over every distinct threshold (ties move both rates at once) and the trapezoidal AUROC."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return RocCurve(np.array([0.0, 1.0]), np.array([0.0, 1.0]), math.nan)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tpr = np.r_[0.0, np.cumsum(labels)[last_of_tie] / n_pos]
    fpr = np.r_[0.0, np.cumsum(~labels)[last_of_tie] / n_neg]
    return RocCurve(fpr, tpr, float(np.trapezoid(tpr, fpr)))


def to_data_uri(figure: Figure) -> str:
    """Render a figure as a PNG data URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _grid(n_panels: int, columns: int, width: float, height: float, top: float = 0.3) -> tuple[Figure, list]:
    """A grid of panels `width` x `height` inches with fixed margins (`top` inches kept for a legend).

    Fixed margins instead of constrained layout or a tight bounding box: those re-measure every text
    artist and take most of the drawing time.
    """
    columns = max(1, min(columns, n_panels))
    rows = math.ceil(n_panels / columns)
    fig_width, fig_height = width * columns, height * rows + top
    figure = Figure(figsize=(fig_width, fig_height))
    figure.subplots_adjust(
        left=0.55 / fig_width,
        right=1 - 0.15 / fig_width,
        bottom=0.45 / fig_height,
        top=1 - (top + 0.35) / fig_height,
        wspace=0.55 / (width - 0.55),
        hspace=0.8 / (height - 0.8),
    )
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for unused in axes[n_panels:]:
        unused.set_visible(False)
    return figure, axes[:n_panels]


def _variant_legend(figure: Figure, colors: Mapping[str, str], variants: Sequence[str]) -> None:
    handles = [figure.axes[0].plot([], [], color=colors[name], lw=2)[0] for name in variants]
    figure.legend(handles, variants, loc="upper center", ncols=min(len(variants), 5), frameon=False, fontsize=9)


def _plot_panel(ax: Axes, panel: Panel, colors: Mapping[str, str], shown: list[str]) -> None:
    """One line per variant of `panel` with its 95% band where it has one; new variants appended to `shown`."""
    for variant, points in panel.series.items():
        points = sorted(points)
        layers = [p.layer for p in points]
        style = "--" if variant in panel.dashed else "-"
        ax.plot(layers, [p.value for p in points], style, marker="o", ms=3, color=colors[variant], lw=1.5)
        low, high = np.array([p.low for p in points]), np.array([p.high for p in points])
        if np.isfinite(low).any():
            ax.fill_between(layers, low, high, color=colors[variant], alpha=0.18, lw=0)
        if variant not in shown:
            shown.append(variant)


def _layer_axis(ax: Axes, title: str, fontsize: int) -> None:
    """Title, a `layer` x axis with integer ticks, and a light grid; labels a point or two below the title."""
    ax.set_title(title, fontsize=fontsize)
    ax.set_xlabel("layer", fontsize=fontsize - 1)
    ax.tick_params(labelsize=fontsize - 2)
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))  # AutoLocator's
    ax.grid(alpha=0.3)


def metric_grid(panels: Sequence[Panel], colors: Mapping[str, str]) -> str:
    """Metric against layer, one line per variant with its 95% band where the metric has one."""
    figure, axes = _grid(len(panels), 4, 3.3, 2.5)
    shown: list[str] = []
    for ax, panel in zip(axes, panels, strict=True):
        _plot_panel(ax, panel, colors, shown)
        _layer_axis(ax, panel.title + (f"\n{panel.note}" if panel.note else ""), fontsize=9)
    if shown:
        _variant_legend(figure, colors, [v for v in colors if v in shown])
    return to_data_uri(figure)


def learning_curves(curves: Mapping[int, Sequence[LearningCurve]], colors: Mapping[str, str]) -> str:
    """Held-out EV against training tokens, one panel per layer, one line per SAE: a variant with replicates
    (several SAEs in a panel) is drawn with thin lines, one per replicate."""
    figure, axes = _grid(len(curves), 4, 3.3, 2.5)
    shown: list[str] = []
    for ax, (layer, layer_curves) in zip(axes, sorted(curves.items()), strict=True):
        per_variant = Counter(curve.variant for curve in layer_curves)
        for curve in layer_curves:
            thin = per_variant[curve.variant] > 1
            ax.plot(curve.tokens, curve.explained_variance, color=colors[curve.variant], lw=0.8 if thin else 1.5)
            if curve.variant not in shown:
                shown.append(curve.variant)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("training tokens", fontsize=8)
        ax.set_ylabel("held-out EV", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if shown:
        _variant_legend(figure, colors, [v for v in colors if v in shown])
    return to_data_uri(figure)


def roc_grid(curves: Mapping[int, Mapping[str, RocCurve]], colors: Mapping[str, str], title: str) -> str:
    """ROC curves per variant, one panel per layer, AUROC in each legend (the paper's Figure 1)."""
    figure, axes = _grid(len(curves), 3, 3.4, 3.4, top=0.0)
    for ax, (layer, by_variant) in zip(axes, sorted(curves.items()), strict=True):
        for variant, curve in by_variant.items():
            ax.plot(
                curve.false_positive_rate,
                curve.true_positive_rate,
                color=colors[variant],
                lw=1.5,
                label=f"{variant} ({curve.auroc:.3f})",
            )
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.set_title(f"{title}, layer {layer}", fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=7)
    return to_data_uri(figure)


def entropy_scatter(
    points: Mapping[str, tuple[np.ndarray, np.ndarray]], colors: Mapping[str, str], auroc_name: str
) -> str:
    """Per-latent token entropy against per-latent AUROC, one panel per variant (the paper's Appendix H)."""
    figure, axes = _grid(len(points), 4, 3.0, 2.6, top=0.0)
    for ax, (variant, (entropy, auroc)) in zip(axes, points.items(), strict=True):
        ax.scatter(entropy, auroc, s=9, alpha=0.6, color=colors[variant], edgecolors="none")
        ax.set_title(f"{variant} (n={int(np.isfinite(entropy * auroc).sum())})", fontsize=9)
        ax.set_xlabel("token entropy (bits)", fontsize=8)
        ax.set_ylabel(f"{auroc_name} AUROC", fontsize=8)
        ax.axhline(0.5, ls=":", color="grey", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return to_data_uri(figure)


def parameter_count(n: int) -> str:
    """`135M`, `6.9B`: a model's size as papers write it."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


class SizePoint(NamedTuple):
    """One model's (or SAE shape's) trained-minus-variant gap of a measurement, with the range its replicates
    (or its interval) span."""

    size: int
    """The model's parameters, or the SAE's latents."""
    label: str
    gap: float
    low: float = math.nan
    high: float = math.nan


def model_metric_grid(columns: Mapping[str, Sequence[Panel]], rows: Sequence[str], colors: Mapping[str, str]) -> str:
    """The paper's Figure 2 for several models: one column per model (`columns`: its title -> its panels), one
    row per measurement (`rows`: panel titles), metric against layer, one line per variant."""
    figure, axes = _grid(len(rows) * len(columns), len(columns), 2.9, 2.1)
    shown: list[str] = []
    for row, title in enumerate(rows):
        for column, (model, panels) in enumerate(columns.items()):
            ax = axes[row * len(columns) + column]
            panel = next((panel for panel in panels if panel.title == title), None)
            if panel is None:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            else:
                _plot_panel(ax, panel, colors, shown)
            _layer_axis(ax, f"{model}\n{title}" if row == 0 else title, fontsize=8)
    if shown:
        _variant_legend(figure, colors, [v for v in colors if v in shown])
    return to_data_uri(figure)


def gap_vs_size(
    panels: Mapping[str, Mapping[str, Sequence[SizePoint]]],
    colors: Mapping[str, str],
    xlabel: str = "parameters",
    tick: Callable[[int], str] = parameter_count,
) -> str:
    """Each measurement's gap (trained minus a random variant, mean over layers) against size (log scale; model
    parameters by default), one line per series (a variant, or an SAE architecture), a bar over the range of
    the replicates, or the interval, where there is one."""
    figure, axes = _grid(len(panels), 4, 3.3, 2.6)
    shown: list[str] = []
    for ax, (title, by_variant) in zip(axes, panels.items(), strict=True):
        for variant, points in by_variant.items():
            points = sorted(points)
            sizes = [p.size for p in points]
            ax.plot(sizes, [p.gap for p in points], marker="o", ms=4, color=colors[variant], lw=1.4)
            low, high = np.array([p.low for p in points]), np.array([p.high for p in points])
            gaps = np.array([p.gap for p in points])
            if np.isfinite(low).any():
                below, above = np.nan_to_num(gaps - low), np.nan_to_num(high - gaps)
                ax.errorbar(sizes, gaps, yerr=[below, above], fmt="none", color=colors[variant], capsize=3, lw=1)
            shown += [variant] if variant not in shown else []
        ax.axhline(0, ls=":", color="grey", lw=1)
        ax.set_xscale("log")
        sizes = sorted({p.size for points in by_variant.values() for p in points})
        ax.set_xticks(sizes, [tick(size) for size in sizes])  # the sizes swept, nothing between
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(sizes[0] / 1.3, sizes[-1] * 1.3)
        ax.set_title(f"{title}: trained − variant", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if shown:
        _variant_legend(figure, colors, [v for v in colors if v in shown])
    return to_data_uri(figure)
