"""The separation table: for every metric, trained against each random variant, with a 95% CI and Cohen's d.

A metric comes as one of two kinds of sample per SAE:

- `MeanSample`: per-unit values (one per latent) whose mean is the metric; fractions are means of 0/1
  flags; a standardized mean (context.py) carries a weight per unit and is their weighted mean. The
  bootstrap resamples each SAE's units (with their weights) independently (for unweighted 0/1 flags that is
  exactly a binomial draw, which is what is drawn).
- `RatioSample`: metric = 1 - sum(num) / sum(den) over held-out rows (the explained variances). The
  bootstrap resamples whole sequences, since rows of one sequence are not independent, and uses the same
  resampled sequences for every SAE (all variants share the held-out tokens), so comparisons are paired.

Each SAE is resampled once and that draw serves every comparison it is in. Over all layers, the value is
the mean of the layers' values weighted by their units (a ratio metric counts each layer once), and it is
resampled layer by layer (a stratified bootstrap).

difference = trained - variant, with a percentile 95% interval over `bootstrap_samples` resamples.
effect size = Cohen's d = (mean_T - mean_V) / sqrt((sd_T^2 + sd_V^2) / 2) on the per-unit values, the units
being what the bootstrap resamples: latents, or for a ratio metric sequences, sequence s's unit being
1 - num_s / mean(den), whose mean is the metric (single tokens' errors are too heavy-tailed to compare).
Weighted units enter with weighted means and variances, their weights scaled to sum to the unit count.
With zero spread on both sides d is +-inf when the means differ and 0 when they do not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from randsae.models.variants import VARIANTS

REFERENCE = "trained"
ALL_LAYERS = "all"


def variant_rank(variant: str) -> tuple[int, str]:
    """Sort key: the known variants in `VARIANTS` order, then any other name alphabetically."""
    return (VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS), variant)


class MeanSample(NamedTuple):
    units: np.ndarray
    """float64 [n_units], finite: the metric is their mean (weighted by `weights` when given)."""
    weights: np.ndarray | None = None
    """float64 [n_units], positive, or None for equal weights."""

    @property
    def weight(self) -> int:
        return self.units.size

    def value(self) -> float:
        return float(np.average(self.units, weights=self.weights)) if self.units.size else math.nan

    def bootstrap(self, n_boot: int, rng: np.random.Generator, sequence_counts: np.ndarray) -> np.ndarray:
        n = self.units.size
        if n == 0:
            return np.full(n_boot, math.nan)
        if self.weights is None and np.isin(self.units, (0.0, 1.0)).all():
            return rng.binomial(n, self.units.mean(), size=n_boot) / n
        weights = np.ones(n) if self.weights is None else self.weights
        means = np.empty(n_boot)
        for start in range(0, n_boot, 128):
            rows = min(128, n_boot - start)
            drawn = rng.integers(0, n, size=(rows, n), dtype=np.int32)
            means[start : start + rows] = (self.units[drawn] * weights[drawn]).sum(1) / weights[drawn].sum(1)
        return means


class RatioSample(NamedTuple):
    num: np.ndarray
    """float64 [n_sequences]: per-sequence sum of the numerator (a squared error)."""
    den: np.ndarray
    """float64 [n_sequences]: per-sequence sum of the denominator."""
    units: np.ndarray
    """float64 [n_sequences]: 1 - num_s / mean_s(den_s), whose mean is the metric (for Cohen's d)."""

    @classmethod
    def from_rows(cls, num_rows: np.ndarray, den_by_sequence: np.ndarray, sequence: np.ndarray) -> RatioSample:
        num = np.bincount(sequence, num_rows, den_by_sequence.size)
        return cls(num, den_by_sequence, 1.0 - num / den_by_sequence.mean())

    @property
    def weight(self) -> int:
        return 1

    def value(self) -> float:
        """NaN when there is nothing to explain (zero denominator)."""
        den = self.den.sum()
        return float(1.0 - self.num.sum() / den) if den > 0 else math.nan

    def bootstrap(self, n_boot: int, rng: np.random.Generator, sequence_counts: np.ndarray) -> np.ndarray:
        return 1.0 - (self.num @ sequence_counts) / (self.den @ sequence_counts)


Sample = MeanSample | RatioSample


class SeparationRow(NamedTuple):
    metric: str
    variant: str
    layer: str
    """A layer number, or "all" for the rows pooled over layers."""
    trained: float
    other: float
    difference: float
    """trained - other."""
    ci_low: float
    ci_high: float
    effect_size: float
    """Cohen's d, trained minus other."""
    n_trained: int
    """Units behind the trained value (latents, or held-out sequences for the explained variances)."""
    n_other: int


def unit_weights(sample: Sample) -> np.ndarray:
    """The sample's unit weights scaled to sum to its unit count (ones when unweighted)."""
    n = sample.units.size
    if isinstance(sample, MeanSample) and sample.weights is not None:
        return sample.weights * (n / sample.weights.sum())
    return np.ones(n)


def cohens_d(
    a: np.ndarray, b: np.ndarray, weights_a: np.ndarray | None = None, weights_b: np.ndarray | None = None
) -> float:
    """d of units a and b, each weighted by weights summing to its unit count (None: equal weights)."""
    if a.size < 2 or b.size < 2:
        return math.nan
    mean_a, var_a = _weighted_moments(a, np.ones(a.size) if weights_a is None else weights_a)
    mean_b, var_b = _weighted_moments(b, np.ones(b.size) if weights_b is None else weights_b)
    spread = math.sqrt((var_a + var_b) / 2.0)
    diff = mean_a - mean_b
    if spread == 0.0:
        return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / spread


def _weighted_moments(units: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted mean and variance (weights summing to the unit count, so equal weights give ddof = 1)."""
    mean = float(np.average(units, weights=weights))
    return mean, float((weights * (units - mean) ** 2).sum() / (weights.sum() - 1.0))


class _Resampled(NamedTuple):
    """One SAE's sample with its bootstrap draw."""

    sample: Sample
    draws: np.ndarray
    """[n_boot] resampled metric values."""


def _pooled(parts: Sequence[_Resampled]) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Value, bootstrap draws, units and unit weights of several layers taken together."""
    weights = np.array([p.sample.weight for p in parts], dtype=np.float64)
    if weights.sum() == 0:
        return math.nan, np.full(parts[0].draws.size, math.nan), np.zeros(0), np.zeros(0)
    weights /= weights.sum()
    value = float(sum(w * p.sample.value() for w, p in zip(weights, parts, strict=True) if w > 0))
    draws = sum(w * p.draws for w, p in zip(weights, parts, strict=True) if w > 0)
    units = np.concatenate([p.sample.units for p in parts])
    return value, draws, units, np.concatenate([unit_weights(p.sample) for p in parts])


def compare(
    trained: Sequence[_Resampled], other: Sequence[_Resampled], metric: str, variant: str, layer: str
) -> SeparationRow:
    t_value, t_draws, t_units, t_weights = _pooled(trained)
    o_value, o_draws, o_units, o_weights = _pooled(other)
    differences = t_draws - o_draws
    if np.isnan(differences).any():
        low = high = math.nan
    else:
        low, high = (float(q) for q in np.percentile(differences, [2.5, 97.5]))
    return SeparationRow(
        metric,
        variant,
        layer,
        t_value,
        o_value,
        t_value - o_value,
        low,
        high,
        cohens_d(t_units, o_units, t_weights, o_weights),
        t_units.size,
        o_units.size,
    )


def separation_table(
    samples: Mapping[str, Mapping[tuple[str, int], Sample]], n_boot: int, seed: int
) -> list[SeparationRow]:
    """Rows for every metric x non-reference variant, pooled over layers then per layer.

    `samples[metric][(variant, layer)]`. Pooled rows come first, metrics ordered by mean |d| over the
    variants (best separating first); per-layer rows follow in the same metric order.
    """
    rng = np.random.default_rng(seed)
    n_sequences = {s.num.size for by_sae in samples.values() for s in by_sae.values() if isinstance(s, RatioSample)}
    if len(n_sequences) > 1:
        raise ValueError(f"ratio samples over different held-out sequences: {sorted(n_sequences)}")
    n_seq = n_sequences.pop() if n_sequences else 1
    sequence_counts = rng.multinomial(n_seq, np.full(n_seq, 1.0 / n_seq), size=n_boot).T
    pooled: dict[str, list[SeparationRow]] = {}
    per_layer: dict[str, list[SeparationRow]] = {}
    for metric, by_sae in samples.items():
        resampled = {key: _Resampled(s, s.bootstrap(n_boot, rng, sequence_counts)) for key, s in by_sae.items()}
        layers = sorted(layer for variant, layer in by_sae if variant == REFERENCE)
        others = sorted({variant for variant, _ in by_sae if variant != REFERENCE}, key=variant_rank)
        pooled[metric], per_layer[metric] = [], []
        for variant in others:
            shared = [layer for layer in layers if (variant, layer) in by_sae]
            if not shared:
                continue
            for label, group in [(ALL_LAYERS, shared)] + [(str(layer), [layer]) for layer in shared]:
                row = compare(
                    [resampled[(REFERENCE, layer)] for layer in group],
                    [resampled[(variant, layer)] for layer in group],
                    metric,
                    variant,
                    label,
                )
                (pooled if label == ALL_LAYERS else per_layer)[metric].append(row)
    order = sorted(pooled, key=lambda metric: -_separation(pooled[metric]))
    return [row for m in order for row in pooled[m]] + [row for m in order for row in per_layer[m]]


def _separation(rows: list[SeparationRow]) -> float:
    """Mean |d| over a metric's comparisons; -1 when none is defined, so such metrics sort last."""
    sizes = [abs(row.effect_size) for row in rows if not math.isnan(row.effect_size)]
    return float(np.mean(sizes)) if sizes else -1.0


def format_rows(rows: Sequence[SeparationRow]) -> str:
    """The pooled rows as an aligned text table."""
    header = ("metric", "variant", "trained", "variant", "trained-variant [95% CI]", "d")
    lines = [header]
    for row in rows:
        if row.layer != ALL_LAYERS:
            continue
        interval = f"{row.difference:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        lines.append(
            (row.metric, row.variant, f"{row.trained:.3f}", f"{row.other:.3f}", interval, f"{row.effect_size:+.2f}")
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
