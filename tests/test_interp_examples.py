"""Example sampling: windows, ranking, quantile bins, and explanation/test disjointness."""

from __future__ import annotations

from typing import Any

import numpy as np

from randsae.interp.config import InterpConfig
from randsae.interp.entropy import token_activation_mass, token_entropy
from randsae.interp.examples import active_windows, sample_examples, window_of_rows, window_tokens
from randsae.interp.latent_cache import LatentEntries

CONTEXT, WINDOW, N_ROWS = 64, 16, 50


def latent_entries(seed: int, rate: float = 0.05) -> tuple[LatentEntries, np.ndarray]:
    """A random sparse latent over N_ROWS x CONTEXT tokens (never on BOS) and its dense activations."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random(N_ROWS * CONTEXT) < rate, rng.exponential(1.0, N_ROWS * CONTEXT), 0.0)
    dense[::CONTEXT] = 0
    rows = np.flatnonzero(dense)
    return LatentEntries(rows, dense[rows].astype(np.float32)), dense.astype(np.float32)


def config(**overrides) -> InterpConfig:
    settings: dict[str, Any] = dict(
        window_size=WINDOW, n_top_windows=100, n_explanation_windows=20, n_quantiles=5, n_per_quantile=6, n_negatives=30
    )
    settings.update(overrides)
    return InterpConfig(**settings)


def test_window_mapping_matches_a_direct_loop():
    rows = np.arange(N_ROWS * CONTEXT)
    expected = [(r // CONTEXT) * (CONTEXT // WINDOW) + (r % CONTEXT) // WINDOW for r in rows]
    assert window_of_rows(rows, CONTEXT, WINDOW).tolist() == expected
    tokens = np.arange(N_ROWS * CONTEXT)
    assert window_tokens(tokens, np.array([0, 5]), CONTEXT, WINDOW).tolist() == [
        list(range(0, 16)),
        list(range(80, 96)),
    ]
    # a row's tail shorter than a window is not used
    assert window_of_rows(np.array([0, 47, 48, 95, 99]), 50, 16).tolist() == [0, 2, -1, 5, -1]


def test_active_windows_groups_entries_and_ranks_windows_by_their_max():
    entries, dense = latent_entries(seed=3)
    active = active_windows(entries, CONTEXT, WINDOW)
    per_window = dense.reshape(-1, WINDOW).max(axis=1)
    assert active.ids.tolist() == np.flatnonzero(per_window).tolist()
    np.testing.assert_array_equal(active.maxima, per_window[active.ids])
    expected = sorted(range(len(active.ids)), key=lambda i: (-per_window[active.ids[i]], active.ids[i]))
    assert active.by_strength.tolist() == expected
    for i, start in enumerate(active.first):
        stop = active.first[i + 1] if i + 1 < len(active.first) else len(active.rows)
        assert set(active.window[start:stop]) == {active.ids[i]}
    # rows in a row's unused tail are left out
    tail = active_windows(LatentEntries(np.array([1, 48, 60]), np.ones(3, np.float32)), 50, 16)
    assert tail.rows.tolist() == [1, 60] and tail.ids.tolist() == [0, 3]


def test_explanation_and_test_sets_are_disjoint_and_follow_the_protocol():
    tokens = np.random.default_rng(9).integers(0, 100, N_ROWS * CONTEXT)
    for seed in range(10):
        entries, dense = latent_entries(seed)
        cfg = config()
        examples = sample_examples(entries, tokens, CONTEXT, cfg, np.random.default_rng(seed))
        explanation, positives, negatives = examples.explanation, examples.positives, examples.negatives
        assert not set(explanation.window_ids) & set(positives.window_ids)
        assert not set(positives.window_ids) & set(negatives.window_ids)
        assert len(set(positives.window_ids)) == len(positives.window_ids)
        window_max = dense.reshape(-1, WINDOW).max(axis=1)
        ranked = np.argsort(-window_max, kind="stable")[: min(cfg.n_top_windows, int((window_max > 0).sum()))]
        assert set(explanation.window_ids) <= set(ranked) and set(positives.window_ids) <= set(ranked)
        assert len(explanation.window_ids) == cfg.n_explanation_windows
        assert (window_max[negatives.window_ids] == 0).all() and len(negatives.window_ids) == cfg.n_negatives
        # quantile q holds ranks [q * len / n_quantiles, (q + 1) * len / n_quantiles)
        rank_of = {w: r for r, w in enumerate(ranked)}
        for window, quantile in zip(positives.window_ids, positives.quantile, strict=True):
            assert rank_of[window] * cfg.n_quantiles // len(ranked) == quantile
        assert np.bincount(positives.quantile).max() <= cfg.n_per_quantile
        # every window carries its own tokens and activations
        for windows in (explanation, positives, negatives):
            starts = windows.window_ids * WINDOW  # CONTEXT is a multiple of WINDOW here
            index = starts[:, None] + np.arange(WINDOW)
            assert (windows.token_ids == tokens[index]).all()
            assert np.array_equal(windows.activations, dense[index])


def test_few_active_windows_shrink_the_sets_without_overlap():
    tokens = np.zeros(N_ROWS * CONTEXT, np.int64)
    entries, _ = latent_entries(0, rate=0.004)
    examples = sample_examples(entries, tokens, CONTEXT, config(), np.random.default_rng(0))
    n_active = examples.n_active_windows
    assert len(examples.explanation.window_ids) == min(20, n_active)
    assert len(examples.explanation.window_ids) + len(examples.positives.window_ids) <= n_active
    assert not set(examples.explanation.window_ids) & set(examples.positives.window_ids)


def test_token_entropy_closed_forms():
    ids = np.array([[1, 1, 2, 3]])
    assert token_entropy(ids, np.array([[2.0, 0.0, 0.0, 0.0]])) == 0.0
    assert token_entropy(ids, np.array([[1.0, 1.0, 2.0, 0.0]])) == 1.0  # token 1: 2, token 2: 2
    assert token_entropy(ids, np.array([[1.0, 0.0, 1.0, 2.0]])) == 1.5  # masses 1/4, 1/4, 1/2
    assert np.isnan(token_entropy(ids, np.zeros((1, 4))))
    mass = token_activation_mass(ids, np.array([[1.0, 0.5, 3.0, 0.0]]))
    assert mass.token_ids.tolist() == [2, 1] and mass.mass.tolist() == [3.0, 1.5]
