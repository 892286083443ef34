"""The separation table: for every metric, trained against each random variant, with a 95% CI and Cohen's d.

A metric comes as one of two kinds of sample per SAE:

- `MeanSample`: per-unit values (one per latent) whose mean is the metric. Fractions are means of 0/1
  flags. The bootstrap resamples units of each SAE independently.
- `RatioSample`: metric = 1 - sum(num) / sum(den) over held-out rows (the explained variances). The
  bootstrap resamples whole sequences, the same ones for trained and the other variant (they share the
  held-out tokens), since rows of one sequence are not independent.

difference = trained - variant, with a percentile 95% interval over `bootstrap_samples` resamples.
effect size = Cohen's d = (mean_T - mean_V) / sqrt((sd_T^2 + sd_V^2) / 2) on the per-unit values (for a
ratio metric, row i's unit is 1 - num_i / (sum(den) / n_rows), whose mean is the metric). With zero spread
on both sides d is +-inf when the means differ and 0 when they do not.
Rows over all layers pool the units of every layer; for ratio metrics the value is the mean over layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

REFERENCE = "trained"
ALL_LAYERS = "all"
VARIANT_ORDER = ("trained", "step0", "rerandomized", "rerandomized_keep_embeddings", "control", "permuted",
                 "fresh_init")
"""How variants are listed; names not in it follow, alphabetically."""


def variant_rank(variant: str) -> tuple[int, str]:
    return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER), variant)


class MeanSample(NamedTuple):
    values: np.ndarray
    """float64 [n_units], finite."""


class RatioSample(NamedTuple):
    num: np.ndarray
    """float64 [n_sequences]: per-sequence sum of the numerator (a squared error)."""
    den: np.ndarray
    """float64 [n_sequences]: per-sequence sum of the denominator."""
    units: np.ndarray
    """float64 [n_rows]: 1 - num_i / (sum(den) / n_rows), whose mean is the metric (for Cohen's d)."""

    @classmethod
    def from_rows(cls, num_rows: np.ndarray, den_by_sequence: np.ndarray, sequence: np.ndarray) -> RatioSample:
        num = np.bincount(sequence, num_rows, den_by_sequence.size)
        return cls(num, den_by_sequence, 1.0 - num_rows / (den_by_sequence.sum() / num_rows.size))

    def value(self) -> float:
        return float(1.0 - self.num.sum() / self.den.sum())


Sample = MeanSample | RatioSample


class Comparison(NamedTuple):
    trained: float
    other: float
    ci_low: float
    ci_high: float
    effect_size: float
    n_trained: int
    n_other: int


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
    n_other: int


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or b.size < 2:
        return math.nan
    spread = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0)
    diff = float(a.mean() - b.mean())
    if spread == 0.0:
        return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / spread


def _resampled_means(values: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 128) -> np.ndarray:
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        means[start:start + rows] = values[rng.integers(0, values.size, size=(rows, values.size))].mean(1)
    return means


def compare_means(trained: Sequence[MeanSample], other: Sequence[MeanSample], n_boot: int,
                  rng: np.random.Generator) -> Comparison:
    a = np.concatenate([s.values for s in trained])
    b = np.concatenate([s.values for s in other])
    if a.size == 0 or b.size == 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, a.size, b.size)
    diffs = _resampled_means(a, n_boot, rng) - _resampled_means(b, n_boot, rng)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Comparison(float(a.mean()), float(b.mean()), float(low), float(high), cohens_d(a, b), a.size, b.size)


def compare_ratios(trained: Sequence[RatioSample], other: Sequence[RatioSample], n_boot: int,
                   rng: np.random.Generator) -> Comparison:
    """Paired over sequences: every resample draws one set of sequences for all layers and both sides."""
    n_seq = trained[0].num.size
    counts = rng.multinomial(n_seq, np.full(n_seq, 1.0 / n_seq), size=n_boot).T

    def resampled(samples: Sequence[RatioSample]) -> np.ndarray:
        return np.mean([1.0 - (s.num @ counts) / (s.den @ counts) for s in samples], axis=0)

    diffs = resampled(trained) - resampled(other)
    low, high = np.percentile(diffs, [2.5, 97.5])
    a = np.concatenate([s.units for s in trained])
    b = np.concatenate([s.units for s in other])
    return Comparison(float(np.mean([s.value() for s in trained])), float(np.mean([s.value() for s in other])),
                      float(low), float(high), cohens_d(a, b), a.size, b.size)


def separation_table(samples: Mapping[str, Mapping[tuple[str, int], Sample]], n_boot: int,
                     seed: int) -> list[SeparationRow]:
    """Rows for every metric x non-reference variant, pooled over layers then per layer.

    `samples[metric][(variant, layer)]`. Pooled rows come first, metrics ordered by mean |d| over the
    variants (best separating first); per-layer rows follow in the same metric order.
    """
    rng = np.random.default_rng(seed)
    pooled: dict[str, list[SeparationRow]] = {}
    per_layer: dict[str, list[SeparationRow]] = {}
    for metric, by_sae in samples.items():
        layers = sorted({layer for variant, layer in by_sae if variant == REFERENCE})
        others = sorted({variant for variant, _ in by_sae if variant != REFERENCE}, key=variant_rank)
        pooled[metric], per_layer[metric] = [], []
        for variant in others:
            shared = [layer for layer in layers if (variant, layer) in by_sae]
            if not shared:
                continue
            groups = [(ALL_LAYERS, shared)] + [(str(layer), [layer]) for layer in shared]
            for label, group in groups:
                ref = [by_sae[(REFERENCE, layer)] for layer in group]
                oth = [by_sae[(variant, layer)] for layer in group]
                compare = compare_ratios if isinstance(ref[0], RatioSample) else compare_means
                c = compare(ref, oth, n_boot, rng)
                row = SeparationRow(metric, variant, label, c.trained, c.other, c.trained - c.other,
                                    c.ci_low, c.ci_high, c.effect_size, c.n_trained, c.n_other)
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
        lines.append((row.metric, row.variant, f"{row.trained:.3f}", f"{row.other:.3f}", interval,
                      f"{row.effect_size:+.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
