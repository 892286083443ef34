"""The verdict: for every measurement, does trained separate from each random variant, and at which layers?

Read off the separation table (separation.py): per measurement and variant, the difference pooled over
layers with its paired interval, p-value and units, and a plain-English reading from the per-layer rows. A
layer *separates* when its 95% interval excludes 0 on the measurement's side (above 0 for direction +1,
below for -1); it goes the *other way* when the interval excludes 0 on the opposite side; a layer without
an interval (too few units, separation.MIN_UNITS) counts as neither.

Readings: "separates at every layer", "separates at layers 3, 10", "trained below random at every layer"
(or "above" for a direction -1 measurement), both joined by "; " when layers disagree, "separates only pooled
over layers" (no single layer's interval excludes 0, the pooled one does), "does not separate", or "no
interval (too few units)". With results at several learning rates (`lr_sweep`), a measurement whose
reading differs between them reads "depends on learning rate (lr 1e-4: ...; lr 3e-4: ...)".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from randsae.analysis.separation import (
    ALL_LAYERS,
    MIN_REPLICATES,
    MIN_UNITS,
    SeparationRow,
    align,
    format_interval,
)


class VerdictRow(NamedTuple):
    metric: str
    variant: str
    direction: int
    """+1: trained above random separates; -1: trained below random does."""
    trained: float
    other: float
    difference: float
    """trained - variant, mean over layers (and replicates)."""
    ci_low: float
    """Paired 95% interval over units (and replicates, from MIN_REPLICATES on); NaN when too few units."""
    ci_high: float
    p_value: float
    effect: float
    """direction x difference / bootstrap SE: positive when trained sits on the separating side."""
    n_units: int
    """Paired units over layers (frequency bins or held-out sequences)."""
    n_trained_replicates: int
    n_other_replicates: int
    separating_layers: tuple[str, ...]
    reading: str


def layer_side(row: SeparationRow | VerdictRow) -> int:
    """+1 when the row's interval lies on the separating side of 0, -1 on the other, 0 otherwise (a layer's
    separation row, or a verdict row's pooled interval)."""
    if math.isnan(row.ci_low):
        return 0
    if row.ci_low > 0 or row.ci_high < 0:
        return row.direction if row.ci_low > 0 else -row.direction
    return 0


def _layers(labels: Sequence[str], every: int) -> str:
    return "at every layer" if len(labels) == every else f"at layer{'s' * (len(labels) > 1)} {', '.join(labels)}"


def reading(layer_rows: Sequence[SeparationRow], pooled: SeparationRow | None = None) -> str:
    """The plain-English reading of one measurement x variant from its per-layer rows (and its pooled row,
    which can separate where no single layer does)."""
    if all(math.isnan(row.ci_low) for row in layer_rows):
        return "no interval (too few units)"
    separating = [row.layer for row in layer_rows if layer_side(row) > 0]
    opposite = [row.layer for row in layer_rows if layer_side(row) < 0]
    parts = []
    if separating:
        parts.append(f"separates {_layers(separating, len(layer_rows))}")
    if opposite:
        word = "below" if layer_rows[0].direction > 0 else "above"
        parts.append(f"trained {word} random {_layers(opposite, len(layer_rows))}")
    if not parts and pooled is not None and layer_side(pooled) > 0:
        return "separates only pooled over layers"
    return "; ".join(parts) or "does not separate"


def _per_layer(rows: Sequence[SeparationRow]) -> dict[tuple[str, str], list[SeparationRow]]:
    """Per (metric, variant): its per-layer rows."""
    out: dict[tuple[str, str], list[SeparationRow]] = {}
    for row in rows:
        if row.layer != ALL_LAYERS:
            out.setdefault((row.metric, row.variant), []).append(row)
    return out


def _readings(rows: Sequence[SeparationRow]) -> dict[tuple[str, str], str]:
    """Per (metric, variant): the reading of its rows."""
    layers = _per_layer(rows)
    pooled = [row for row in rows if row.layer == ALL_LAYERS]
    return {(r.metric, r.variant): reading(layers.get((r.metric, r.variant), []), r) for r in pooled}


def verdict_table(
    rows: Sequence[SeparationRow], lr_sweep: Mapping[str, Sequence[SeparationRow]] | None = None
) -> list[VerdictRow]:
    """One row per measurement x variant, in the separation table's order (best separating first).

    `lr_sweep` (learning-rate label -> that run's separation rows), when given, turns a reading that differs
    between learning rates into "depends on learning rate (...)".
    """
    texts, layers = _readings(rows), _per_layer(rows)
    sweep = {lr: _readings(lr_rows) for lr, lr_rows in (lr_sweep or {}).items()}
    out = []
    for row in rows:
        if row.layer != ALL_LAYERS:
            continue
        pair = (row.metric, row.variant)
        text = texts[pair]
        readings = {lr: by[pair] for lr, by in sweep.items() if pair in by}
        if len(set(readings.values())) > 1:
            text = "depends on learning rate (" + "; ".join(f"lr {lr}: {r}" for lr, r in readings.items()) + ")"
        out.append(
            VerdictRow(
                row.metric,
                row.variant,
                row.direction,
                row.trained,
                row.other,
                row.difference,
                row.ci_low,
                row.ci_high,
                row.p_value,
                row.direction * row.effect,
                row.n_units,
                row.n_trained_replicates,
                row.n_other_replicates,
                tuple(r.layer for r in layers.get(pair, []) if layer_side(r) > 0),
                text,
            )
        )
    return out


def verdict_json(rows: Sequence[VerdictRow]) -> dict[str, Any]:
    """The content of verdict.json: the rows and the rules they follow."""
    return {
        "min_units": MIN_UNITS,
        "min_replicates": MIN_REPLICATES,
        "effect": "direction x (trained - variant) / SD of the paired bootstrap differences",
        "verdict": [row._asdict() for row in rows],
    }


def format_verdict(rows: Sequence[VerdictRow]) -> str:
    """The verdict as an aligned text table."""
    if not rows:
        return "no verdict (needs a trained SAE and at least one other variant)"
    lines = [("metric", "variant", "trained-variant [95% CI]", "n", "reps", "p", "reading")]
    for row in rows:
        lines.append(
            (
                row.metric,
                row.variant,
                format_interval(row.difference, row.ci_low, row.ci_high),
                str(row.n_units),
                f"{row.n_trained_replicates}/{row.n_other_replicates}",
                f"{row.p_value:.2g}",
                row.reading,
            )
        )
    title = "Verdict: trained vs each random variant (paired over the same units; reps = replicates trained/variant)"
    return title + "\n" + align(lines)
