"""The toy experiment's outputs: toy_results.csv (one row per SAE), toy_results.json and toy_report.html.

The HTML page is self-contained (plots embedded as base64 PNG), so it can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
import numpy as np

from randsae.atomic import write_text_atomic
from randsae.toml_config import to_plain
from randsae.toy.metrics import SPARSITY_MEASURES, pareto_front
from randsae.toy.results import ToyResult, ToyRow

REPORT_FILE = "toy_report.html"
CSV_FILE = "toy_results.csv"
JSON_FILE = "toy_results.json"
MEASURE_LABELS = {
    "l0": "L0 (active latents)",
    "l1": "L1 (‖z‖₁)",
    "l1_over_sqrt_l2": "‖z‖₁ / √‖z‖₂",
    "hoyer": "Hoyer sparsity",
}
DATA_STYLE = {"toy": ("tab:blue", "planted features"), "gaussian": ("tab:orange", "Gaussian control")}


def write_outputs(result: ToyResult) -> None:
    write_text_atomic(result.out_dir / CSV_FILE, results_csv(result.rows))
    write_text_atomic(result.out_dir / JSON_FILE, results_json(result))
    write_text_atomic(result.out_dir / REPORT_FILE, render_html(result))


def results_csv(rows: tuple[ToyRow, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[field.name for field in dataclasses.fields(rows[0])])
    writer.writeheader()
    writer.writerows(dataclasses.asdict(row) for row in rows)
    return buffer.getvalue()


def results_json(result: ToyResult) -> str:
    document = {
        "config": to_plain(result.config),
        "wall_seconds": result.wall_seconds,
        "recovery": [item._asdict() for item in result.recovery],
        "front_gaps": [item._asdict() for item in result.gaps],
        "rows": [dataclasses.asdict(row) for row in result.rows],
    }
    return json.dumps(_finite_or_null(document), indent=1)


def _finite_or_null(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _networks(rows: tuple[ToyRow, ...]) -> list[str]:
    return list(dict.fromkeys(row.network for row in rows))


def mmcs_figure(rows: tuple[ToyRow, ...]) -> str:
    """MMCS against λ, one panel per network, a line per (data, width), mean over seeds."""
    networks = _networks(rows)
    figure, axes = plt.subplots(1, len(networks), figsize=(4.5 * len(networks), 3.6), squeeze=False, sharey=True)
    for axis, network in zip(axes[0], networks, strict=True):
        for data, (color, label) in DATA_STYLE.items():
            widths = sorted({row.d_sae for row in rows if row.network == network and row.data == data})
            for shade, width in enumerate(widths):
                points = _mean_by_l1(
                    [row for row in rows if (row.network, row.data, row.d_sae) == (network, data, width)], "mmcs"
                )
                axis.plot(
                    *points,
                    marker="o",
                    color=color,
                    alpha=1.0 - 0.6 * shade / max(len(widths), 1),
                    label=f"{label}, {width} latents",
                )
        axis.set(xscale="log", xlabel="L1 coefficient λ", title=f"network: {network}", ylim=(0, 1))
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("MMCS with planted features")
    axes[0][-1].legend(fontsize=7)
    return _png(figure)


def _mean_by_l1(rows: list[ToyRow], metric: str) -> tuple[np.ndarray, np.ndarray]:
    l1s = sorted({row.l1_coefficient for row in rows})
    means = [np.mean([getattr(row, metric) for row in rows if row.l1_coefficient == l1]) for l1 in l1s]
    return np.array(l1s), np.array(means)


def pareto_figure(rows: tuple[ToyRow, ...]) -> str:
    """Explained variance against each sparsity measure: a row per measure, a column per network."""
    networks = _networks(rows)
    figure, axes = plt.subplots(
        len(SPARSITY_MEASURES),
        len(networks),
        squeeze=False,
        figsize=(4.5 * len(networks), 3.2 * len(SPARSITY_MEASURES)),
    )
    for row_axes, (measure, higher_is_sparser) in zip(axes, SPARSITY_MEASURES.items(), strict=True):
        for axis, network in zip(row_axes, networks, strict=True):
            for data, (color, label) in DATA_STYLE.items():
                points = [row for row in rows if row.network == network and row.data == data]
                sparsity = np.array([getattr(row, measure) for row in points])
                explained = np.array([row.explained_variance for row in points])
                front = pareto_front(sparsity, explained, higher_is_sparser)
                axis.scatter(sparsity, explained, s=10, color=color, alpha=0.35)
                axis.step(sparsity[front], explained[front], where="post", color=color, label=label)
            if measure != "hoyer":
                axis.set_xscale("symlog", linthresh=1e-2)
            axis.set(
                xlabel=MEASURE_LABELS[measure] + (" (higher = sparser)" if higher_is_sparser else ""),
                ylabel="explained variance",
                title=f"network: {network}",
            )
            axis.set_ylim(top=1.05)  # no floor: uncentred data can explain less than its mean does
            axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _table(header: list[str], body: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if not math.isfinite(value) else f"{value:.4g}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    rows = "".join("<tr>" + "".join(f"<td>{cell(value)}</td>" for value in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}img{max-width:100%}p.note{color:#555;font-size:0.9em}"""


def render_html(result: ToyResult) -> str:
    rows = result.rows
    recovery = _table(
        ["data", "network", "latents", "best MMCS", "at λ"],
        [[r.data, r.network, r.d_sae, r.best_mmcs, r.best_l1_coefficient] for r in result.recovery],
    )
    gaps = _table(
        ["network", "sparsity measure", "gap (toy − control)"],
        [[g.network, MEASURE_LABELS[g.measure], g.gap] for g in result.gaps],
    )
    settings = _table(["setting", "value"], [[key, value] for key, value in to_plain(result.config).items()])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>randsae toy models</title><style>{STYLE}</style></head><body>
<h1>Toy models: superposition through random networks</h1>
<p>Planted sparse features in superposition (Sharkey et al. 2022) and a Gaussian control with the same mean and
standard deviation, each used as is and after random networks, are fitted with {len(rows)} ReLU-L1 sparse
autoencoders. Two questions (Heap et al., section 4): do SAEs recover planted features that went through a random
network (superposition survives a random map), and does a random network make even Gaussian data look sparse
(the gap between the data's and the control's Pareto fronts shrinks)?</p>
<h2>Feature recovery</h2>
<p class="note">MMCS: mean over planted features of the best cosine with a decoder row (after a network, with the
feature's image net(f) − net(0)). For the control it is the chance level: its SAEs never saw those features.</p>
{recovery}
<img src="{mmcs_figure(rows)}" alt="MMCS against the L1 coefficient">
<h2>Sparsity against reconstruction</h2>
<p class="note">Gap: mean distance in explained variance between the Pareto fronts of the planted-feature data and
of the control, over the sparsity range both cover. Positive: the data is easier to explain sparsely.</p>
{gaps}
<img src="{pareto_figure(rows)}" alt="Pareto fronts of explained variance against sparsity">
<h2>Settings</h2>
{settings}
<p class="note">Wall time of this invocation: {result.wall_seconds:.0f} s (sweeps resumed from disk cost nothing).
Every SAE is a row of {CSV_FILE}.</p>
</body></html>
"""
