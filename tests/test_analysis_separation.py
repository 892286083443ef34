"""The separation table's statistics: Cohen's d, bootstrap intervals and the ordering of metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from randsae.analysis.separation import (
    ALL_LAYERS, MeanSample, RatioSample, cohens_d, compare_means, compare_ratios, format_rows, separation_table,
)


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
    c = compare_means([MeanSample(a)], [MeanSample(b)], n_boot=2000, rng=np.random.default_rng(1))
    se = math.sqrt(a.var() / a.size + b.var() / b.size)
    diff = a.mean() - b.mean()
    assert (c.trained, c.other) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    assert c.ci_low == pytest.approx(diff - 1.96 * se, abs=0.15 * se)
    assert c.ci_high == pytest.approx(diff + 1.96 * se, abs=0.15 * se)
    assert c.effect_size == pytest.approx(cohens_d(a, b))


def test_ratio_metric_value_units_and_paired_interval():
    rng = np.random.default_rng(2)
    sequence = np.repeat(np.arange(50), 10)
    error = rng.exponential(size=500)
    variance = np.bincount(sequence, error * 3.0)
    sample = RatioSample.from_rows(error, variance, sequence)
    assert sample.value() == pytest.approx(1 - error.sum() / (3 * error.sum()))
    assert sample.units.mean() == pytest.approx(sample.value())
    same = compare_ratios([sample], [sample], n_boot=200, rng=np.random.default_rng(3))
    assert same.ci_low == same.ci_high == 0.0 and same.effect_size == 0.0

    better = RatioSample.from_rows(error * 0.5, variance, sequence)
    c = compare_ratios([better], [sample], n_boot=500, rng=np.random.default_rng(4))
    assert c.trained - c.other == pytest.approx(error.sum() / (3 * error.sum()) * 0.5)
    # the numerators are proportional, so every paired resample has the same difference
    assert c.ci_low == pytest.approx(c.ci_high) == pytest.approx(c.trained - c.other)
    assert c.effect_size > 0


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
        ("shifted", "step0", ALL_LAYERS), ("shifted", "control", ALL_LAYERS),
        ("same", "step0", ALL_LAYERS), ("same", "control", ALL_LAYERS)]
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
