"""The separation table's paired statistics: frequency bins, paired bootstrap, replicates, rank tests, order."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from randsae.analysis.separation import (
    ALL_LAYERS,
    MeanSample,
    RatioSample,
    format_rows,
    rank_test,
    separation_table,
)
from randsae.run_dir import SAEKey


def mean(units, frequency=None) -> MeanSample:
    units = np.asarray(units, dtype=np.float64)
    return MeanSample(units, np.arange(units.size) if frequency is None else np.asarray(frequency))


def one_layer(metric: str, trained, other) -> dict:
    return {metric: {SAEKey("trained", 0): trained, SAEKey("step0", 0): other}}


def test_frequency_bins_sort_by_firing_count_and_split_evenly():
    sample = mean([5.0, 1.0, 3.0, 2.0, 4.0], frequency=[40, 10, 30, 20, 30])
    sums, counts = sample.paired_units(2)  # sorted: 1 (10), 2 (20), 3 (30), 4 (30, later index), 5 (40)
    assert sums.tolist() == [1.0 + 2.0, 3.0 + 4.0 + 5.0] and counts.tolist() == [2, 3]
    sums, counts = sample.paired_units(5)
    assert sums.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and counts.tolist() == [1] * 5
    assert sums.sum() / counts.sum() == pytest.approx(sample.value())


def test_latents_are_paired_by_frequency_so_a_constant_shift_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    frequency = rng.permutation(40)
    units = frequency / 40.0  # the measurement follows firing frequency
    trained = mean(units + 0.1, frequency)
    order = rng.permutation(40)
    other = mean(units[order], frequency[order])  # the same latents (unit, frequency) in another index order
    row = separation_table(one_layer("m", trained, other), n_boot=300, seed=1)[0]
    assert row.difference == pytest.approx(0.1)
    assert row.ci_low == pytest.approx(0.1) and row.ci_high == pytest.approx(0.1)
    assert row.effect == math.inf and row.n_units == 40 and row.n_trained == row.n_other == 40


def test_paired_interval_matches_the_closed_form_standard_error():
    rng = np.random.default_rng(1)
    q = 200
    trained, other = rng.normal(0.3, 1.0, size=q), rng.normal(0.0, 1.0, size=q)
    row = separation_table(one_layer("m", mean(trained), mean(other)), n_boot=4000, seed=2)[0]
    d = trained - other  # one latent per bin, bins paired by index (= frequency)
    se = d.std() / math.sqrt(q)
    assert row.difference == pytest.approx(d.mean())
    assert row.ci_low == pytest.approx(d.mean() - 1.96 * se, abs=0.1 * se)
    assert row.ci_high == pytest.approx(d.mean() + 1.96 * se, abs=0.1 * se)
    assert row.effect == pytest.approx(d.mean() / se, rel=0.05)


def test_weighted_units_give_the_weighted_mean_and_equal_weights_change_nothing():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 1.0, size=300), rng.normal(0.0, 2.0, size=300)
    weights_a = np.where(a > 1.0, 3.0, 1.0)
    weighted = MeanSample(a, np.arange(300), weights_a)
    row = separation_table(one_layer("m", weighted, mean(b)), 500, seed=1)[0]
    assert row.trained == pytest.approx((a * weights_a).sum() / weights_a.sum()) and row.trained > a.mean() + 0.3
    sums, totals = weighted.paired_units(3)  # bins of 100 latents: weighted sums over their weights
    np.testing.assert_allclose(
        sums / totals, [np.average(a[k : k + 100], weights=weights_a[k : k + 100]) for k in (0, 100, 200)]
    )
    plain = separation_table(one_layer("m", mean(a), mean(b)), 500, seed=1)[0]
    ones = separation_table(one_layer("m", MeanSample(a, np.arange(300), np.ones(300)), mean(b)), 500, seed=1)[0]
    assert (ones.difference, ones.ci_low, ones.ci_high) == pytest.approx(
        (plain.difference, plain.ci_low, plain.ci_high)
    )


def test_no_interval_below_five_paired_units():
    four = separation_table(one_layer("m", mean([1.0] * 4), mean([0.0] * 9)), n_boot=50, seed=0)[0]
    assert four.difference == 1.0 and four.n_units == 4
    assert math.isnan(four.ci_low) and math.isnan(four.ci_high) and math.isnan(four.effect)
    five = separation_table(one_layer("m", mean([1.0] * 5), mean([0.0] * 9)), n_boot=50, seed=0)[0]
    assert five.ci_low == five.ci_high == 1.0


def test_replicates_from_three_on_are_resampled_and_two_are_averaged():
    def run(values):
        samples = {"m": {SAEKey("step0", 0): mean(np.zeros(10))}}
        for seed, value in enumerate(values):
            samples["m"][SAEKey("trained", 0, sae_seed=seed)] = mean(np.full(10, value))
        return separation_table(samples, n_boot=2000, seed=3)[0]

    two = run([0.1, 0.3])
    assert two.trained == pytest.approx(0.2) and two.n_trained_replicates == 2 and two.n_other_replicates == 1
    assert two.ci_low == pytest.approx(0.2) and two.ci_high == pytest.approx(0.2)  # units carry no spread
    four = run([0.1, 0.2, 0.3, 0.4])
    assert four.trained == pytest.approx(0.25) and four.n_trained == 40 and four.n_trained_replicates == 4
    # the mean of 4 draws from {0.1, ..., 0.4} is at most 0.125 with probability 5/256 < 2.5% and at most
    # 0.15 with probability 15/256 > 2.5%: the interval is [0.15, 0.35]
    assert four.ci_low == pytest.approx(0.15) and four.ci_high == pytest.approx(0.35)


def test_rank_tests_match_exact_hand_computed_p_values():
    # Mann-Whitney U, 4 vs 4 with every trained unit above: 2 of the C(8, 4) = 70 splits are this extreme
    assert rank_test(np.array([5.0, 6.0, 7.0, 8.0]), np.array([1.0, 2.0, 3.0, 4.0]), paired=False) == pytest.approx(
        2 / 70
    )
    # Wilcoxon signed-rank, 6 positive differences of distinct size: 2 of the 2^6 sign patterns
    assert rank_test(np.arange(1.0, 7.0) + 1, np.ones(6), paired=True) == pytest.approx(2 / 64)
    assert rank_test(np.ones(6), np.ones(6), paired=True) == 1.0
    assert math.isnan(rank_test(np.zeros(0), np.ones(3), paired=False))


def test_latent_p_value_pools_the_replicates_units():
    rng = np.random.default_rng(4)
    parts = [rng.normal(size=8) for _ in range(3)]
    samples = {
        "m": {
            SAEKey("trained", 0, sae_seed=0): mean(parts[0]),
            SAEKey("trained", 0, sae_seed=1): mean(parts[1]),
            SAEKey("step0", 0, sae_seed=0): mean(parts[2]),
        }
    }
    row = separation_table(samples, n_boot=20, seed=0)[0]
    expected = stats.mannwhitneyu(np.concatenate(parts[:2]), parts[2], alternative="two-sided").pvalue
    assert row.p_value == pytest.approx(expected) and row.n_trained == 16 and row.n_other == 8


def test_ratio_metric_value_units_paired_interval_and_signed_rank_test():
    rng = np.random.default_rng(2)
    sequence = np.repeat(np.arange(50), 10)
    error = rng.exponential(size=500)
    variance = np.bincount(sequence, error * 3.0)
    sample = RatioSample.from_rows(error, variance, sequence)
    assert sample.value() == pytest.approx(1 - error.sum() / (3 * error.sum()))
    assert sample.units.mean() == pytest.approx(sample.value())
    same = separation_table(one_layer("ev", sample, sample), n_boot=200, seed=3)[0]
    assert same.ci_low == same.ci_high == 0.0 and same.effect == 0.0 and same.p_value == 1.0

    better = RatioSample.from_rows(error * 0.5, variance, sequence)
    row = separation_table(one_layer("ev", better, sample), n_boot=500, seed=4)[0]
    assert row.difference == pytest.approx(error.sum() / (3 * error.sum()) * 0.5)
    # the numerators are proportional, so every paired resample has the same difference
    assert row.ci_low == pytest.approx(row.ci_high) == pytest.approx(row.difference)
    assert row.n_units == 50
    assert row.p_value == pytest.approx(stats.wilcoxon(better.units - sample.units).pvalue)


def test_pooled_rows_average_the_layers():
    samples = {
        "frac": {
            SAEKey("trained", 0): mean(np.ones(30)),
            SAEKey("trained", 1): mean(np.zeros(10)),
            SAEKey("step0", 0): mean(np.zeros(5)),
            SAEKey("step0", 1): mean(np.zeros(5)),
        }
    }
    sequence = np.arange(4)
    for layer, share in ((0, 0.2), (1, 0.6)):
        samples.setdefault("ev", {})[SAEKey("trained", layer)] = RatioSample.from_rows(
            np.full(4, share), np.ones(4), sequence
        )
        samples["ev"][SAEKey("step0", layer)] = RatioSample.from_rows(np.full(4, 1.0), np.ones(4), sequence)
    rows = {(r.metric, r.layer): r for r in separation_table(samples, n_boot=100, seed=0)}
    assert rows[("frac", ALL_LAYERS)].trained == pytest.approx(0.5)
    assert rows[("frac", ALL_LAYERS)].n_trained == 40 and rows[("frac", ALL_LAYERS)].n_units == 10
    assert rows[("ev", ALL_LAYERS)].trained == pytest.approx(1 - (0.2 + 0.6) / 2)
    assert rows[("ev", "1")].trained == pytest.approx(0.4)
    assert math.isnan(rows[("ev", "1")].ci_low)  # 4 sequences: too few for an interval


def test_table_ranks_by_signed_effect_pooled_rows_before_layers():
    rng = np.random.default_rng(5)
    samples: dict = {"same": {}, "shifted": {}, "lookup_ev": {}}
    for layer in (0, 1):
        for variant in ("trained", "step0", "control"):
            key = SAEKey(variant, layer)
            samples["same"][key] = mean(rng.normal(size=300))
            shift = 1.0 if variant == "trained" else 0.0
            samples["shifted"][key] = mean(rng.normal(shift, 1.0, size=300))
            samples["lookup_ev"][key] = mean(rng.normal(shift, 1.0, size=300))  # trained above: wrong side
    rows = separation_table(samples, n_boot=300, seed=0)
    assert [(r.metric, r.variant, r.layer) for r in rows[:6]] == [
        ("shifted", "step0", ALL_LAYERS),
        ("shifted", "control", ALL_LAYERS),
        ("same", "step0", ALL_LAYERS),
        ("same", "control", ALL_LAYERS),
        ("lookup_ev", "step0", ALL_LAYERS),
        ("lookup_ev", "control", ALL_LAYERS),
    ]
    assert rows[4].direction == -1 and rows[4].effect > 3 and rows[0].direction == 1
    assert {r.layer for r in rows[6:]} == {"0", "1"}
    assert len(rows) == 3 * 2 * 3
    shifted = rows[0]
    assert shifted.ci_low < shifted.difference < shifted.ci_high and shifted.ci_low > 0.7
    assert shifted.n_trained == shifted.n_other == shifted.n_units == 600
    same = rows[2]
    assert same.ci_low < 0 < same.ci_high
    text = format_rows(rows)
    assert text.splitlines()[1].startswith("shifted") and len(text.splitlines()) == 7


def test_variant_without_a_trained_counterpart_layer_is_left_out():
    samples = {"m": {SAEKey("trained", 0): mean(np.ones(3)), SAEKey("step0", 1): mean(np.zeros(3))}}
    assert separation_table(samples, n_boot=10, seed=0) == []


def test_empty_sample_gives_nan_not_an_error():
    row = separation_table(one_layer("m", mean(np.zeros(0)), mean(np.ones(4))), n_boot=10, seed=0)[0]
    assert math.isnan(row.trained) and math.isnan(row.ci_low) and math.isnan(row.effect)
    assert math.isnan(row.p_value) and row.n_units == 0


def test_frequency_pairing_removes_what_frequency_explains():
    """Units driven by firing frequency on both sides, trained 0.05 higher: the paired interval is as narrow as
    the noise, where an unpaired comparison of the units would drown the shift in the frequency spread."""
    rng = np.random.default_rng(6)
    n = 400
    frequency = rng.integers(1, 10_000, size=(2, n))
    units = np.log(frequency) / 10 + rng.normal(0, 0.01, size=(2, n))
    row = separation_table(
        one_layer("m", mean(units[0] + 0.05, frequency[0]), mean(units[1], frequency[1])), n_boot=2000, seed=7
    )[0]
    unpaired_se = math.sqrt(units[0].var() / n + units[1].var() / n)
    assert row.ci_low > 0.03 and row.ci_high < 0.07
    assert row.ci_high - row.ci_low < 0.25 * (2 * 1.96 * unpaired_se)  # measured: 0.0033 against 0.026
