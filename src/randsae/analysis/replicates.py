"""How much a measurement moves between replicates (SAE seeds, random draws) of one variant and layer.

The value of a variant at a layer is the mean over its replicates; the spread beside it is their range and,
from `MIN_REPLICATES` replicates on, a 95% t interval of that mean: mean +- t(0.975, n - 1) * sd / sqrt(n),
sd the sample standard deviation over the n replicates (replicates are independent trainings, so their mean
is approximately normal for a smooth measurement; with fewer than 3 the interval would rest on one degree of
freedom, so none is given).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from randsae.analysis.measure import SAEMeasurements
from randsae.analysis.separation import MIN_REPLICATES

_IDENTITY = {"variant", "layer", "variant_seed", "sae_seed"}


class ReplicateSpread(NamedTuple):
    metric: str
    variant: str
    layer: int
    n: int
    """Replicates with a defined value."""
    mean: float
    minimum: float
    maximum: float
    ci_low: float
    """95% t interval of the mean over replicates; NaN with fewer than MIN_REPLICATES."""
    ci_high: float


def mean_interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% t interval of the mean of `values`; NaN with fewer than MIN_REPLICATES values."""
    if values.size < MIN_REPLICATES:
        return math.nan, math.nan
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def replicate_spread(records: Sequence[SAEMeasurements]) -> list[ReplicateSpread]:
    """One row per float measurement x variant x layer that has more than one replicate, in record order."""
    groups: dict[tuple[str, int], list[SAEMeasurements]] = {}
    for record in records:
        groups.setdefault((record.variant, record.layer), []).append(record)
    metrics = [
        field.name
        for field in dataclasses.fields(SAEMeasurements)
        if field.type in ("float", float) and field.name not in _IDENTITY
    ]
    rows = []
    for (variant, layer), group in groups.items():
        if len(group) < 2:
            continue
        for metric in metrics:
            values = np.array([getattr(record, metric) for record in group], dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            low, high = mean_interval(values)
            mean, low_value, high_value = (float(f(values)) for f in (np.mean, np.min, np.max))
            rows.append(ReplicateSpread(metric, variant, layer, values.size, mean, low_value, high_value, low, high))
    return rows
