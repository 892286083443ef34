"""Scores from judged examples: AUROC (pooled with a bootstrap CI over latents, and per latent), balanced
accuracy and F1.

Failed examples (request, parse or explanation failures) stay in every denominator: for AUROC they get
probability 0.5 (the judge said nothing), for accuracy and F1 they count as wrong answers. Their number
is reported next to every score.

Pooled AUROC over latents is sum_{l,m} w_l w_m U[l, m] / (sum w P)(sum w N), where U[l, m] counts the
correctly ordered (positive of latent l, negative of latent m) pairs (ties count 1/2) and w are the
latents' multiplicities; the bootstrap resamples latents, so one U matrix serves every resample exactly.
"""

from __future__ import annotations

from typing import NamedTuple, overload

import numpy as np

FAILED_PROBABILITY = 0.5


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float


class Spread(NamedTuple):
    """Distribution of a per-latent value (NaNs left out and counted)."""

    mean: float
    q10: float
    q25: float
    median: float
    q75: float
    q90: float
    n: int
    n_undefined: int


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(positive scores above negative), ties counting 1/2 (Mann-Whitney U);
    NaN without both classes."""
    labels = np.asarray(labels, bool)
    return pooled_auroc(pair_counts(labels, scores, np.zeros(len(labels), np.int64), 1))


class PairCounts(NamedTuple):
    """Correctly ordered pair counts between the positives and negatives of every pair of groups."""

    ordered: np.ndarray
    """float64 [G, G]: U[l, m] = #(pos of l > neg of m) + 0.5 #(ties)."""
    positives: np.ndarray
    """int64 [G]."""
    negatives: np.ndarray
    """int64 [G]."""


def pair_counts(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_groups: int) -> PairCounts:
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    groups = np.asarray(groups, np.int64)
    ordered = np.zeros((n_groups, n_groups))
    pos_scores, pos_groups = scores[labels], groups[labels]
    for m in range(n_groups):
        negatives = np.sort(scores[~labels & (groups == m)])
        below = np.searchsorted(negatives, pos_scores, side="left")
        below_or_tied = np.searchsorted(negatives, pos_scores, side="right")
        wins = below + 0.5 * (below_or_tied - below)
        ordered[:, m] = np.bincount(pos_groups, weights=wins, minlength=n_groups)
    return PairCounts(
        ordered, np.bincount(groups[labels], minlength=n_groups), np.bincount(groups[~labels], minlength=n_groups)
    )


def per_group_auroc(counts: PairCounts) -> np.ndarray:
    """Each group's own AUROC (its positives against its negatives), NaN where a class is missing."""
    denominator = counts.positives * counts.negatives
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, np.diag(counts.ordered) / denominator, np.nan)


@overload
def pooled_auroc(counts: PairCounts, weights: None = None) -> float: ...
@overload
def pooled_auroc(counts: PairCounts, weights: np.ndarray) -> np.ndarray: ...
def pooled_auroc(counts: PairCounts, weights: np.ndarray | None = None) -> np.ndarray | float:
    """AUROC of all examples pooled; `weights` [B, G] gives one value per row (group multiplicities)."""
    if weights is None:
        total = counts.positives.sum() * counts.negatives.sum()
        return float(counts.ordered.sum() / total) if total else float("nan")
    numerator = np.einsum("bi,ij,bj->b", weights, counts.ordered, weights)
    denominator = (weights @ counts.positives) * (weights @ counts.negatives)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def pooled_auroc_interval(counts: PairCounts, n_bootstrap: int, seed: int, level: float = 0.95) -> Interval:
    """Pooled AUROC with a percentile bootstrap CI from resampling groups (latents) with replacement."""
    estimate = pooled_auroc(counts)
    n_groups = len(counts.positives)
    if n_groups == 0 or np.isnan(estimate):
        return Interval(estimate, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=n_bootstrap).astype(np.float64)
    resampled = pooled_auroc(counts, weights)
    resampled = resampled[~np.isnan(resampled)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def effective_predictions(labels: np.ndarray, predictions: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """Predictions with every failed example turned into a wrong answer."""
    labels = np.asarray(labels, bool)
    return np.where(np.asarray(failed, bool), ~labels, np.asarray(predictions, bool))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates (NaN without both classes)."""
    labels, predictions = np.asarray(labels, bool), np.asarray(predictions, bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float((predictions[labels].mean() + (~predictions[~labels]).mean()) / 2)


def f1_score(labels: np.ndarray, predictions: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN); 0 when there is no positive at all, label or prediction."""
    labels, predictions = np.asarray(labels, bool), np.asarray(predictions, bool)
    true_positives = int((labels & predictions).sum())
    wrong = int((labels ^ predictions).sum())
    return 2 * true_positives / (2 * true_positives + wrong) if true_positives + wrong else 0.0


def spread(values: np.ndarray) -> Spread:
    values = np.asarray(values, np.float64)
    defined = values[~np.isnan(values)]
    if len(defined) == 0:
        nan = float("nan")
        return Spread(nan, nan, nan, nan, nan, nan, 0, len(values))
    q10, q25, median, q75, q90 = (float(q) for q in np.percentile(defined, [10, 25, 50, 75, 90]))
    return Spread(float(defined.mean()), q10, q25, median, q75, q90, len(defined), len(values) - len(defined))
