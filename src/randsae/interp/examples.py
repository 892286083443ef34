"""Example windows of one latent: the explanation set and the test set, kept disjoint.

The held-out rows (context_size tokens each) are cut into `window_size`-token windows. Windows where the
latent fires are ranked by their max activation (`active_windows`, which the dashboards use too) and the
top `n_top_windows` kept. The explainer sees `n_explanation_windows` of them drawn at random; the test
positives are drawn from `n_quantiles` rank bins of the same top list *after removing the explanation
windows* (delphi's default sampler re-uses about a quarter of them, inflating scores); the negatives are
windows where the latent never fires.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from randsae.interp.config import InterpConfig
from randsae.interp.latent_cache import LatentEntries


class WindowSet(NamedTuple):
    """A batch of windows of one latent, as arrays."""

    window_ids: np.ndarray
    """int64 [m]: window index (row r lies in window (r // ctx) * (ctx // W) + (r % ctx) // W)."""
    token_ids: np.ndarray
    """int64 [m, W]."""
    activations: np.ndarray
    """float32 [m, W]: the latent's activation on each token (0 where it does not fire)."""
    quantile: np.ndarray
    """int64 [m]: rank bin among the top windows (0 = strongest), -1 for a window where it never fires."""


class ActiveWindows(NamedTuple):
    """One latent's entries grouped by window, and its windows ranked by their max activation."""

    rows: np.ndarray
    """int64 [m]: the latent's rows, ascending, less those in a row's unused tail."""
    values: np.ndarray
    """float32 [m]: its activation on them."""
    window: np.ndarray
    """int64 [m]: the window of each row."""
    ids: np.ndarray
    """int64 [a]: the windows it fires in, ascending."""
    first: np.ndarray
    """int64 [a]: index of each window's first entry (its entries are first[i]:first[i + 1])."""
    maxima: np.ndarray
    """float32 [a]: its max activation in each window."""
    by_strength: np.ndarray
    """int64 [a]: indices into `ids`, largest max first (ties: the earlier window)."""


class LatentExamples(NamedTuple):
    """Everything the explainer and the scorers see for one latent."""

    explanation: WindowSet
    positives: WindowSet
    negatives: WindowSet
    n_active_windows: int
    """Windows on which the latent fires at least once."""


def window_count(n_tokens: int, context_size: int, window_size: int) -> int:
    """Windows in the held-out split (a row's tail shorter than a window is not used)."""
    return (n_tokens // context_size) * (context_size // window_size)


def window_of_rows(rows: np.ndarray, context_size: int, window_size: int) -> np.ndarray:
    """Window index of each row, -1 for a row in a row's unused tail."""
    per_row = context_size // window_size
    position = rows % context_size
    windows = (rows // context_size) * per_row + position // window_size
    return np.where(position < per_row * window_size, windows, -1)


def window_tokens(tokens: np.ndarray, window_ids: np.ndarray, context_size: int, window_size: int) -> np.ndarray:
    """int64 [m, W] token ids of the given windows; `tokens` is the flattened held-out input_ids."""
    per_row = context_size // window_size
    starts = (window_ids // per_row) * context_size + (window_ids % per_row) * window_size
    return tokens[starts[:, None] + np.arange(window_size)].astype(np.int64)


def active_windows(entries: LatentEntries, context_size: int, window_size: int) -> ActiveWindows:
    """Group one latent's entries (rows ascending) by window and rank the windows."""
    windows = window_of_rows(entries.rows, context_size, window_size)
    used = windows >= 0
    windows, rows, values = windows[used], entries.rows[used], entries.values[used]
    ids, first = np.unique(windows, return_index=True)
    maxima = np.maximum.reduceat(values, first) if len(values) else np.zeros(0, np.float32)
    return ActiveWindows(rows, values, windows, ids, first, maxima, np.argsort(-maxima, kind="stable"))


def sample_examples(
    entries: LatentEntries, tokens: np.ndarray, context_size: int, cfg: InterpConfig, rng: np.random.Generator
) -> LatentExamples:
    """Draw the explanation set, the quantile-stratified positives and the negatives of one latent."""
    size = cfg.window_size
    active = active_windows(entries, context_size, size)
    windows, values, rows = active.window, active.values, active.rows
    ranked = active.ids[active.by_strength][: cfg.n_top_windows]

    n_explain = min(cfg.n_explanation_windows, len(ranked))
    explain_ids = rng.choice(ranked, size=n_explain, replace=False)
    bins = np.array_split(np.arange(len(ranked)), min(cfg.n_quantiles, len(ranked)) or 1)
    bin_of_rank = np.concatenate([np.full(len(ranks), quantile) for quantile, ranks in enumerate(bins)])
    by_id = np.argsort(ranked)
    explain_bins = bin_of_rank[by_id[np.searchsorted(ranked[by_id], explain_ids)]]
    positive_ids, positive_bins = [], []
    for quantile, ranks in enumerate(bins):
        candidates = np.setdiff1d(ranked[ranks], explain_ids)
        drawn = rng.choice(candidates, size=min(cfg.n_per_quantile, len(candidates)), replace=False)
        positive_ids.append(drawn)
        positive_bins.append(np.full(len(drawn), quantile))
    n_windows = window_count(len(tokens), context_size, size)
    silent = np.setdiff1d(np.arange(n_windows), active.ids)
    negative_ids = rng.choice(silent, size=min(cfg.n_negatives, len(silent)), replace=False)

    def window_set(ids: np.ndarray, quantile: np.ndarray) -> WindowSet:
        ids = ids.astype(np.int64)
        activations = np.zeros((len(ids), size), np.float32)
        order = np.argsort(ids)
        slot = np.searchsorted(ids[order], windows)
        slot = np.minimum(slot, max(len(ids) - 1, 0))
        hit = (ids[order][slot] == windows) if len(ids) else np.zeros(len(windows), bool)
        activations[order[slot[hit]], (rows[hit] % context_size) % size] = values[hit]
        return WindowSet(ids, window_tokens(tokens, ids, context_size, size), activations, quantile.astype(np.int64))

    return LatentExamples(
        explanation=window_set(explain_ids, explain_bins),
        positives=window_set(np.concatenate(positive_ids), np.concatenate(positive_bins)),
        negatives=window_set(negative_ids, np.full(len(negative_ids), -1)),
        n_active_windows=len(active.ids),
    )
