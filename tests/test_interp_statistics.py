"""Interp statistics against scikit-learn and direct recomputation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from randsae.interp import statistics
from randsae.interp.scorers import ScoredExample
from randsae.interp.summary import latent_scores, summarize_scores


def grouped_scores(seed: int, n_groups: int = 7, tied: bool = False):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(6, 30, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    labels = rng.random(len(groups)) < 0.5
    scores = rng.normal(size=len(groups)) + labels * rng.uniform(0, 2, n_groups)[groups]
    if tied:
        scores = np.round(scores * 2) / 2  # many exact ties, across and within classes
    return labels, scores, groups


@pytest.mark.parametrize("tied", [False, True])
def test_auroc_equals_sklearn(tied):
    for seed in range(5):
        labels, scores, _ = grouped_scores(seed, tied=tied)
        assert statistics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_is_nan_with_one_class():
    assert math.isnan(statistics.auroc(np.ones(4, bool), np.arange(4.0)))


@pytest.mark.parametrize("tied", [False, True])
def test_pooled_and_per_group_auroc_equal_sklearn(tied):
    labels, scores, groups = grouped_scores(1, tied=tied)
    counts = statistics.pair_counts(labels, scores, groups, 7)
    assert statistics.pooled_auroc(counts) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    per_group = statistics.per_group_auroc(counts)
    for g in range(7):
        mask = groups == g
        if labels[mask].all() or not labels[mask].any():
            assert math.isnan(per_group[g])
        else:
            assert per_group[g] == pytest.approx(roc_auc_score(labels[mask], scores[mask]), abs=1e-12)


def test_bootstrap_weights_give_the_auroc_of_the_resampled_pool():
    """The U-matrix shortcut must equal sklearn on the concatenation of the resampled groups."""
    labels, scores, groups = grouped_scores(2, tied=True)
    counts = statistics.pair_counts(labels, scores, groups, 7)
    rng = np.random.default_rng(0)
    for _ in range(5):
        picked = rng.integers(0, 7, 7)
        weights = np.bincount(picked, minlength=7).astype(float)
        index = np.concatenate([np.flatnonzero(groups == g) for g in picked])
        fast = statistics.pooled_auroc(counts, weights[None, :])[0]
        assert fast == pytest.approx(roc_auc_score(labels[index], scores[index]), abs=1e-12)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_groups():
    labels, scores, groups = grouped_scores(3, n_groups=5)
    few = statistics.pooled_auroc_interval(statistics.pair_counts(labels, scores, groups, 5), 500, seed=0)
    labels, scores, groups = grouped_scores(3, n_groups=80)
    many = statistics.pooled_auroc_interval(statistics.pair_counts(labels, scores, groups, 80), 500, seed=0)
    for interval in (few, many):
        assert interval.low <= interval.estimate <= interval.high
    assert many.high - many.low < few.high - few.low


def test_balanced_accuracy_and_f1_equal_sklearn():
    rng = np.random.default_rng(4)
    labels, predictions = rng.random(50) < 0.4, rng.random(50) < 0.5
    assert statistics.balanced_accuracy(labels, predictions) == pytest.approx(
        balanced_accuracy_score(labels, predictions)
    )
    assert statistics.f1_score(labels, predictions) == pytest.approx(f1_score(labels, predictions))


def test_failures_become_wrong_answers():
    labels = np.array([True, True, False, False])
    predictions = np.array([True, True, False, False])
    failed = np.array([False, True, True, False])
    assert statistics.effective_predictions(labels, predictions, failed).tolist() == [True, False, True, False]


def record(activating: bool, probability: float | None, failure: str | None = None) -> ScoredExample:
    prediction = None if failure or probability is None else probability > 0.5
    return ScoredExample(
        ["a"],
        [0.0],
        0 if activating else -1,
        activating,
        prediction,
        probability,
        failure is None and prediction == activating,
        None,
        failure,
        "logprobs",
    )


def test_summary_keeps_failures_in_every_denominator():
    latent_a = [record(True, 0.9), record(True, None, "parse"), record(False, 0.2), record(False, None, "request")]
    latent_b = [record(True, 0.6), record(False, 0.7), record(False, 0.1)]
    summary = summarize_scores([latent_a, latent_b], n_bootstrap=100, seed=0)
    labels = np.array([1, 1, 0, 0, 1, 0, 0], bool)
    probabilities = np.array([0.9, 0.5, 0.2, 0.5, 0.6, 0.7, 0.1])  # failures scored 0.5
    effective = np.array([1, 0, 0, 1, 1, 1, 0], bool)  # failures answered wrong
    assert summary.auroc == pytest.approx(roc_auc_score(labels, probabilities))
    assert summary.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, effective))
    assert summary.f1 == pytest.approx(f1_score(labels, effective))
    assert (summary.n_examples, summary.n_failed, summary.n_parse_failures, summary.n_request_failures) == (7, 2, 1, 1)
    assert summary.latent_auroc.n == 2
    auroc_a = latent_scores(latent_a).auroc
    assert auroc_a == pytest.approx(roc_auc_score(labels[:4], probabilities[:4]))


def test_spread_ignores_and_counts_undefined_values():
    result = statistics.spread(np.array([0.5, np.nan, 0.7, 0.9]))
    assert (result.mean, result.median, result.n, result.n_undefined) == (pytest.approx(0.7), 0.7, 3, 1)
