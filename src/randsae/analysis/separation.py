"""The separation table: for every measurement, trained minus each random variant, paired over the same units.

A measurement comes as one of two kinds of sample per SAE:

- `MeanSample`: per-latent units (the measurement is their mean; fractions are means of 0/1 flags; a
  standardized mean (context.py) weighs each unit and is their weighted mean) with each latent's firing
  count. Two SAEs' latents are not the same latents, so they are paired by firing frequency: each SAE's
  units, sorted by firing count, are cut into Q consecutive bins of (nearly) equal count, Q the fewest units
  of any SAE in the comparison, and bin q of trained pairs with bin q of the variant (low-frequency latents
  with low-frequency latents).
- `RatioSample`: 1 - sum(num) / sum(den) over held-out sequences (the explained variances). Every variant
  shares the held-out tokens, so sequence s pairs with sequence s.

Both are ratios of sums over paired units (a bin's weighted sum of units over its weights; a sequence's numerator and
denominator), so a resample of the paired units gives each SAE a value, and the point value (every unit
once) is the plain one: the mean over all latents, the explained variance over all rows.

Per layer each side's value is the mean over its replicates (SAE seeds, variant draws) and difference =
trained - variant. Its percentile 95% interval resamples the paired units with replacement, the same draw for
both sides (for sequences the same draw for every SAE, layer and measurement); when a side has at least
`MIN_REPLICATES` replicates they are resampled too, within the side, the same draw at every layer. No interval
with fewer than `MIN_UNITS` paired units. Over all layers ("all") the layers' values, differences and draws
are averaged, each layer weighing the same.

effect = difference / SE, SE the standard deviation of the resampled differences (a z score of the paired
difference; +-inf when the resamples do not vary but the difference is not 0). Every measurement declares
the direction that separates: +1 (trained above random) unless listed in `RANDOM_HIGHER` (-1: random models
are expected higher, e.g. their latents are more single-token); metrics are ranked by direction x effect.

p_value: a two-sided rank test on the units. Latents are not paired, so Mann-Whitney U compares trained's
latents with the variant's (every replicate's together); sequences are, so the Wilcoxon signed-rank test
takes the per-sequence differences of the replicate-mean units. "all" tests every layer's units together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from randsae.models.variants import VARIANTS
from randsae.run_dir import SAEKey

REFERENCE = "trained"
ALL_LAYERS = "all"
MIN_UNITS = 5
"""Fewest paired units (frequency bins, held-out sequences) behind a confidence interval."""
MIN_REPLICATES = 3
"""Fewest replicates of a side that are resampled (and behind a replicate interval, see replicates.py)."""
RANDOM_HIGHER = frozenset({"single_token_fraction", "mean_top_token_share", "lookup_ev"})
"""Measurements that separate when trained is *below* random: token identity explains more of a random model."""
_BLOCK = 128  # resamples drawn at a time (bounds memory at 128 x units counts)


def direction(metric: str) -> int:
    """+1 when trained above random separates, -1 when trained below random does."""
    return -1 if metric in RANDOM_HIGHER else 1


def variant_rank(variant: str) -> tuple[int, str]:
    """Sort key: the known variants in `VARIANTS` order, then any other name alphabetically."""
    return (VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS), variant)


class MeanSample(NamedTuple):
    units: np.ndarray
    """float64 [n_units], finite: the measurement is their mean (weighted by `weights` when given)."""
    frequency: np.ndarray
    """int64 [n_units]: each unit's latent's firing count, the key latents are paired by."""
    weights: np.ndarray | None = None
    """float64 [n_units], positive: a standardized mean's unit weights (context.py); None for equal ones."""

    @property
    def n_units(self) -> int:
        return self.units.size

    def value(self) -> float:
        return float(np.average(self.units, weights=self.weights)) if self.units.size else math.nan

    def paired_units(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """Weighted sums and weights [q] of q frequency bins: the units sorted by firing count (ties by index),
        cut into q consecutive runs whose counts differ by at most one (with equal weights, the weights of a
        bin are its count)."""
        order = np.argsort(self.frequency, kind="stable")
        weights = np.ones(self.units.size) if self.weights is None else self.weights[order]
        starts = np.arange(q) * order.size // q
        return np.add.reduceat(self.units[order] * weights, starts), np.add.reduceat(weights, starts)

    @staticmethod
    def of_ratio(ratio: np.ndarray) -> np.ndarray:
        """The value from the ratio of the paired units' sums (bin sums over bin weights: the mean)."""
        return ratio


class RatioSample(NamedTuple):
    num: np.ndarray
    """float64 [n_sequences]: per-sequence sum of the numerator (a squared error)."""
    den: np.ndarray
    """float64 [n_sequences]: per-sequence sum of the denominator."""
    units: np.ndarray
    """float64 [n_sequences]: 1 - num_s / mean_s(den_s), whose mean is the value (for the signed-rank test)."""

    @classmethod
    def from_rows(cls, num_rows: np.ndarray, den_by_sequence: np.ndarray, sequence: np.ndarray) -> RatioSample:
        num = np.bincount(sequence, num_rows, den_by_sequence.size)
        return cls(num, den_by_sequence, 1.0 - num / den_by_sequence.mean())

    @property
    def n_units(self) -> int:
        return self.num.size

    def value(self) -> float:
        """NaN when there is nothing to explain (zero denominator)."""
        den = self.den.sum()
        return float(1.0 - self.num.sum() / den) if den > 0 else math.nan

    def paired_units(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """The per-sequence numerators and denominators (q is the number of sequences)."""
        return self.num, self.den

    @staticmethod
    def of_ratio(ratio: np.ndarray) -> np.ndarray:
        """The value from the ratio of the paired units' sums (squared errors over variances)."""
        return 1.0 - ratio


Sample = MeanSample | RatioSample


class SeparationRow(NamedTuple):
    metric: str
    variant: str
    layer: str
    """A layer number, or "all" for the rows pooled over layers."""
    direction: int
    """+1: trained above random separates; -1: trained below random does (`RANDOM_HIGHER`)."""
    trained: float
    """Mean over trained's replicates (for "all", over layers too)."""
    other: float
    difference: float
    """trained - other."""
    ci_low: float
    """Paired bootstrap 95% interval of the difference; NaN with fewer than MIN_UNITS paired units."""
    ci_high: float
    effect: float
    """difference / bootstrap SE; NaN without an interval."""
    p_value: float
    """Two-sided rank test: Mann-Whitney U on latents, Wilcoxon signed-rank on paired sequences."""
    n_units: int
    """Paired units behind the interval: frequency bins or held-out sequences (for "all", over layers)."""
    n_trained: int
    """Units of trained: latents over every replicate, or held-out sequences (for "all", over layers)."""
    n_other: int
    n_trained_replicates: int
    """Trained SAEs per layer (the fewest of any layer for "all"); resampled when at least MIN_REPLICATES."""
    n_other_replicates: int


class _Layer(NamedTuple):
    """One layer of one comparison."""

    trained: float
    other: float
    draws: np.ndarray | None
    """[n_boot] resampled differences, None without an interval."""
    n_units: int
    trained_units: np.ndarray
    """What the rank test compares: pooled latent units, or replicate-mean sequence units."""
    other_units: np.ndarray
    n_trained: int
    n_other: int


def _counts(index: np.ndarray, q: int) -> np.ndarray:
    """[rows, q] float64: how often each unit is drawn in each row of `index` [rows, q]."""
    rows = index.shape[0]
    flat = (index + q * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * q).reshape(rows, q).astype(np.float64)


class _Resampler:
    """The random draws of one table: the shared held-out sequence draw and the replicate draws."""

    def __init__(self, n_boot: int, seed: int, n_sequences: int) -> None:
        self.n_boot = n_boot
        self.rng = np.random.default_rng(seed)
        self.sequences = _counts(self.rng.integers(0, n_sequences, size=(n_boot, n_sequences)), n_sequences)

    def unit_counts(self, sample: Sample, q: int) -> Iterator[np.ndarray]:
        """Blocks [rows, q] of resampled paired-unit counts: fresh bins for latents, the shared sequences."""
        if isinstance(sample, RatioSample):
            yield self.sequences
            return
        for start in range(0, self.n_boot, _BLOCK):
            yield _counts(self.rng.integers(0, q, size=(min(_BLOCK, self.n_boot - start), q)), q)

    def replicate_weights(self, n: int) -> np.ndarray:
        """[n_boot, n] weights of a side's replicates: resampled when there are MIN_REPLICATES, else equal."""
        if n < MIN_REPLICATES:
            return np.full((self.n_boot, n), 1.0 / n)
        return self.rng.multinomial(n, np.full(n, 1.0 / n), size=self.n_boot) / n


def _resampled(samples: Sequence[Sample], q: int, blocks: list[np.ndarray]) -> np.ndarray:
    """[n_replicates, n_boot] values of each sample over the same resampled paired units."""
    out = []
    for sample in samples:
        num, den = sample.paired_units(q)
        out.append(sample.of_ratio(np.concatenate([(counts @ num) / (counts @ den) for counts in blocks])))
    return np.stack(out)


def _compare_layer(
    trained: Sequence[Sample], other: Sequence[Sample], weights: tuple[np.ndarray, np.ndarray], draw: _Resampler
) -> _Layer:
    both = [*trained, *other]
    q = min(s.n_units for s in both)
    paired = isinstance(trained[0], RatioSample)
    if paired:
        t_units = np.mean([s.units for s in trained], axis=0)
        o_units = np.mean([s.units for s in other], axis=0)
        n_t = n_o = q
    else:
        t_units, o_units = np.concatenate([s.units for s in trained]), np.concatenate([s.units for s in other])
        n_t, n_o = t_units.size, o_units.size
    t_value = float(np.mean([s.value() for s in trained])) if q else math.nan
    o_value = float(np.mean([s.value() for s in other])) if q else math.nan
    draws = None
    if q >= MIN_UNITS:
        blocks = list(draw.unit_counts(trained[0], q))
        values = _resampled(both, q, blocks)
        t_w, o_w = weights
        draws = (values[: len(trained)].T * t_w).sum(1) - (values[len(trained) :].T * o_w).sum(1)
    return _Layer(t_value, o_value, draws, q, t_units, o_units, n_t, n_o)


def rank_test(trained: np.ndarray, other: np.ndarray, paired: bool) -> float:
    """Two-sided p-value: Wilcoxon signed-rank on trained - other when paired, else Mann-Whitney U. 1 when
    every paired difference is 0; NaN without units."""
    if paired:
        differences = trained - other
        if differences.size == 0:
            return math.nan
        if not differences.any():
            return 1.0
        return float(stats.wilcoxon(differences).pvalue)
    if trained.size == 0 or other.size == 0:
        return math.nan
    return float(stats.mannwhitneyu(trained, other, alternative="two-sided").pvalue)


def _effect(difference: float, draws: np.ndarray | None) -> float:
    if draws is None or np.isnan(draws).any() or math.isnan(difference):
        return math.nan
    se = float(draws.std(ddof=1)) if draws.size > 1 else 0.0
    if se <= 1e-12 * abs(difference) or se == 0.0:  # the resamples agree up to rounding
        return 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    return difference / se


def _row(
    metric: str, variant: str, label: str, layers: Sequence[_Layer], paired: bool, reps: tuple[int, int]
) -> SeparationRow:
    trained = float(np.mean([layer.trained for layer in layers]))
    other = float(np.mean([layer.other for layer in layers]))
    layer_draws = [layer.draws for layer in layers if layer.draws is not None]
    draws = np.mean(layer_draws, axis=0) if len(layer_draws) == len(layers) else None
    low = high = math.nan
    if draws is not None and not np.isnan(draws).any():
        low, high = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
    difference = trained - other
    p_value = rank_test(
        np.concatenate([layer.trained_units for layer in layers]),
        np.concatenate([layer.other_units for layer in layers]),
        paired,
    )
    return SeparationRow(
        metric,
        variant,
        label,
        direction(metric),
        trained,
        other,
        difference,
        low,
        high,
        _effect(difference, draws),
        p_value,
        sum(layer.n_units for layer in layers),
        sum(layer.n_trained for layer in layers),
        sum(layer.n_other for layer in layers),
        *reps,
    )


def _replicate_order(key: SAEKey) -> tuple[int, int]:
    return (-1 if key.variant_seed is None else key.variant_seed, -1 if key.sae_seed is None else key.sae_seed)


def separation_table(samples: Mapping[str, Mapping[SAEKey, Sample]], n_boot: int, seed: int) -> list[SeparationRow]:
    """Rows for every measurement x non-reference variant, pooled over layers then per layer.

    `samples[metric][key]`, one sample per SAE (replicates included). Pooled rows come first, measurements
    ordered by mean direction x effect over the variants (best separating first, NaN last); per-layer rows
    follow in the same order.
    """
    n_sequences = {s.num.size for by_sae in samples.values() for s in by_sae.values() if isinstance(s, RatioSample)}
    if len(n_sequences) > 1:
        raise ValueError(f"ratio samples over different held-out sequences: {sorted(n_sequences)}")
    draw = _Resampler(n_boot, seed, n_sequences.pop() if n_sequences else 1)
    pooled: dict[str, list[SeparationRow]] = {}
    per_layer: dict[str, list[SeparationRow]] = {}
    for metric, by_sae in samples.items():
        groups: dict[tuple[str, int], list[Sample]] = {}
        for key in sorted(by_sae, key=_replicate_order):
            groups.setdefault((key.variant, key.layer), []).append(by_sae[key])
        layers = sorted(layer for variant, layer in groups if variant == REFERENCE)
        others = sorted({variant for variant, _ in groups if variant != REFERENCE}, key=variant_rank)
        pooled[metric], per_layer[metric] = [], []
        for variant in others:
            shared = [layer for layer in layers if (variant, layer) in groups]
            if not shared:
                continue
            weights: dict[tuple[str, int], np.ndarray] = {}  # one replicate draw per side, shared by the layers
            compared = {}
            for layer in shared:
                t, o = groups[(REFERENCE, layer)], groups[(variant, layer)]
                for name, n in ((REFERENCE, len(t)), (variant, len(o))):
                    if (name, n) not in weights:
                        weights[(name, n)] = draw.replicate_weights(n)
                compared[layer] = _compare_layer(t, o, (weights[(REFERENCE, len(t))], weights[(variant, len(o))]), draw)
            paired = isinstance(groups[(REFERENCE, shared[0])][0], RatioSample)
            for label, group in [(ALL_LAYERS, shared)] + [(str(layer), [layer]) for layer in shared]:
                reps = (
                    min(len(groups[(REFERENCE, layer)]) for layer in group),
                    min(len(groups[(variant, layer)]) for layer in group),
                )
                row = _row(metric, variant, label, [compared[layer] for layer in group], paired, reps)
                (pooled if label == ALL_LAYERS else per_layer)[metric].append(row)
    order = sorted(pooled, key=lambda metric: -_separation(pooled[metric]))
    return [row for m in order for row in pooled[m]] + [row for m in order for row in per_layer[m]]


def _separation(rows: list[SeparationRow]) -> float:
    """Mean direction x effect over a measurement's comparisons; -inf when none is defined (sorts last)."""
    sizes = [row.direction * row.effect for row in rows if not math.isnan(row.effect)]
    mean = float(np.mean(sizes)) if sizes else -math.inf
    return -math.inf if math.isnan(mean) else mean


def format_rows(rows: Sequence[SeparationRow]) -> str:
    """The pooled rows as an aligned text table."""
    header = ("metric", "variant", "trained", "variant", "trained-variant [95% CI]", "n", "effect", "p")
    lines = [header]
    for row in rows:
        if row.layer != ALL_LAYERS:
            continue
        lines.append(
            (
                row.metric,
                row.variant,
                f"{row.trained:.3f}",
                f"{row.other:.3f}",
                format_interval(row.difference, row.ci_low, row.ci_high),
                str(row.n_units),
                f"{row.direction * row.effect:+.2f}",
                f"{row.p_value:.2g}",
            )
        )
    return align(lines)


def format_interval(difference: float, low: float, high: float) -> str:
    """`+0.123 [+0.100, +0.150]`, or the difference alone when there is no interval."""
    if math.isnan(low):
        return f"{difference:+.3f} [no CI]"
    return f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]"


def align(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
