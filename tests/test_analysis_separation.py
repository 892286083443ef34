"""The separation table's statistics: Cohen's d, bootstrap intervals and the ordering of metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from randsae.analysis.separation import (
    ALL_LAYERS,
    MeanSample,
    RatioSample,
    cohens_d,
    format_rows,
    separation_table,
)


def one_layer(metric: str, trained, other) -> dict:
    return {metric: {("trained", 0): trained, ("step0", 0): other}}


def test_cohens_d_closed_form_and_degenerate_cases():
    assert cohens_d(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0])) == pytest.approx(-1.0)
    a, b = np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    assert cohens_d(a, b) == pytest.approx((0.5 - 5 / 6) / pooled)
    assert cohens_d(np.ones(5), np.zeros(5)) == math.inf
    assert cohens_d(np.zeros(5), np.ones(5)) == -math.inf
    assert cohens_d(np.ones(5), np.ones(5)) == 0.0
    assert math.isnan(cohens_d(np.ones(1), np.ones(5)))


def test_mean_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, size=4000), rng.normal(0.8, 1.0, size=3000)
    row = separation_table(one_layer("m", MeanSample(a), MeanSample(b)), n_boot=2000, seed=1)[0]
    se = math.sqrt(a.var() / a.size + b.var() / b.size)
    diff = a.mean() - b.mean()
    assert (row.trained, row.other, row.layer) == (pytest.approx(a.mean()), pytest.approx(b.mean()), ALL_LAYERS)
    assert row.ci_low == pytest.approx(diff - 1.96 * se, abs=0.15 * se)
    assert row.ci_high == pytest.approx(diff + 1.96 * se, abs=0.15 * se)
    assert row.effect_size == pytest.approx(cohens_d(a, b))


def test_weighted_units_give_the_weighted_mean_its_interval_and_weighted_d():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 1.0, size=3000), rng.normal(0.0, 2.0, size=3000)
    weights_a, weights_b = np.where(a > 1.0, 3.0, 1.0), rng.uniform(0.5, 1.5, size=3000)
    row = separation_table(one_layer("m", MeanSample(a, weights_a), MeanSample(b, weights_b)), 2000, seed=1)[0]
    mean_a, mean_b = (a * weights_a).sum() / weights_a.sum(), (b * weights_b).sum() / weights_b.sum()
    assert (row.trained, row.other) == (pytest.approx(mean_a), pytest.approx(mean_b))
    assert mean_a > a.mean() + 0.3  # the weights matter

    def moments(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
        w = w * x.size / w.sum()  # weights scaled to the unit count
        m = (w * x).sum() / x.size
        return m, (w * (x - m) ** 2).sum() / (x.size - 1)

    (ma, va), (mb, vb) = moments(a, weights_a), moments(b, weights_b)
    assert row.effect_size == pytest.approx((ma - mb) / math.sqrt((va + vb) / 2))
    # the percentile interval against a direct resampling of (unit, weight) pairs
    direct = []
    for _ in range(500):
        i, j = rng.integers(0, 3000, 3000), rng.integers(0, 3000, 3000)
        direct.append(
            (a[i] * weights_a[i]).sum() / weights_a[i].sum() - (b[j] * weights_b[j]).sum() / weights_b[j].sum()
        )
    assert row.ci_high - row.ci_low == pytest.approx(np.percentile(direct, 97.5) - np.percentile(direct, 2.5), rel=0.15)
    assert cohens_d(a, b, np.ones(3000), np.ones(3000)) == pytest.approx(cohens_d(a, b))


def test_binary_units_resample_like_generic_units():
    flags = (np.random.default_rng(2).random(500) < 0.3) * 1.0
    binomial = MeanSample(flags).bootstrap(4000, np.random.default_rng(3), np.zeros((1, 4000)))
    generic = MeanSample(flags + 1e-12 * (flags == 0)).bootstrap(4000, np.random.default_rng(4), np.zeros((1, 4000)))
    assert binomial.mean() == pytest.approx(flags.mean(), abs=0.003)
    assert binomial.std() == pytest.approx(generic.std(), rel=0.1)
    assert binomial.std() == pytest.approx(math.sqrt(flags.mean() * (1 - flags.mean()) / 500), rel=0.1)


def test_ratio_metric_value_units_and_paired_interval():
    rng = np.random.default_rng(2)
    sequence = np.repeat(np.arange(50), 10)
    error = rng.exponential(size=500)
    variance = np.bincount(sequence, error * 3.0)
    sample = RatioSample.from_rows(error, variance, sequence)
    assert sample.value() == pytest.approx(1 - error.sum() / (3 * error.sum()))
    assert sample.units.mean() == pytest.approx(sample.value())
    assert sample.units.size == 50  # one unit per sequence, the resampling unit
    same = separation_table(one_layer("ev", sample, sample), n_boot=200, seed=3)[0]
    assert same.ci_low == same.ci_high == 0.0 and same.effect_size == 0.0

    better = RatioSample.from_rows(error * 0.5, variance, sequence)
    row = separation_table(one_layer("ev", better, sample), n_boot=500, seed=4)[0]
    assert row.difference == pytest.approx(error.sum() / (3 * error.sum()) * 0.5)
    # the numerators are proportional, so every paired resample has the same difference
    assert row.ci_low == pytest.approx(row.ci_high) == pytest.approx(row.difference)
    assert row.effect_size > 0


def test_pooled_rows_weight_layers_by_units_and_ratio_metrics_by_layer():
    samples = {
        "frac": {
            ("trained", 0): MeanSample(np.ones(30)),
            ("trained", 1): MeanSample(np.zeros(10)),
            ("step0", 0): MeanSample(np.zeros(5)),
            ("step0", 1): MeanSample(np.zeros(5)),
        }
    }
    sequence = np.arange(4)
    for layer, share in ((0, 0.2), (1, 0.6)):
        samples.setdefault("ev", {})[("trained", layer)] = RatioSample.from_rows(
            np.full(4, share), np.ones(4), sequence
        )
        samples["ev"][("step0", layer)] = RatioSample.from_rows(np.full(4, 1.0), np.ones(4), sequence)
    rows = {(r.metric, r.layer): r for r in separation_table(samples, n_boot=100, seed=0)}
    assert rows[("frac", ALL_LAYERS)].trained == pytest.approx(0.75)
    assert rows[("frac", ALL_LAYERS)].n_trained == 40
    assert rows[("ev", ALL_LAYERS)].trained == pytest.approx(1 - (0.2 + 0.6) / 2)
    assert rows[("ev", "1")].trained == pytest.approx(0.4)


def test_table_puts_the_separating_metric_first_and_pooled_rows_before_layers():
    rng = np.random.default_rng(5)
    samples = {"same": {}, "shifted": {}}
    for layer in (0, 1):
        for variant in ("trained", "step0", "control"):
            samples["same"][(variant, layer)] = MeanSample(rng.normal(size=300))
            shift = 1.0 if variant == "trained" else 0.0
            samples["shifted"][(variant, layer)] = MeanSample(rng.normal(shift, 1.0, size=300))
    rows = separation_table(samples, n_boot=300, seed=0)
    assert [(r.metric, r.variant, r.layer) for r in rows[:4]] == [
        ("shifted", "step0", ALL_LAYERS),
        ("shifted", "control", ALL_LAYERS),
        ("same", "step0", ALL_LAYERS),
        ("same", "control", ALL_LAYERS),
    ]
    assert {r.layer for r in rows[4:]} == {"0", "1"}
    assert len(rows) == 2 * 2 * 3
    shifted = rows[0]
    assert shifted.ci_low < shifted.difference < shifted.ci_high and shifted.ci_low > 0.7
    assert shifted.n_trained == shifted.n_other == 600
    same = rows[2]
    assert same.ci_low < 0 < same.ci_high
    text = format_rows(rows)
    assert text.splitlines()[1].startswith("shifted") and len(text.splitlines()) == 5


def test_variant_without_a_trained_counterpart_layer_is_left_out():
    samples = {"m": {("trained", 0): MeanSample(np.ones(3)), ("step0", 1): MeanSample(np.zeros(3))}}
    assert separation_table(samples, n_boot=10, seed=0) == []


def test_empty_sample_gives_nan_interval_not_an_error():
    row = separation_table(one_layer("m", MeanSample(np.zeros(0)), MeanSample(np.ones(4))), n_boot=10, seed=0)[0]
    assert math.isnan(row.trained) and math.isnan(row.ci_low) and math.isnan(row.effect_size)
