"""The held-out rows an analysis looks at, the SAE's sparse codes on them, and variance shared by groups.

Every latent measurement is a scatter over the non-zero codes (a few tens per token for a TopK SAE), so
nothing ever loops over tokens or latents in Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from randsae.data.tokens import counted


class RowLayout(NamedTuple):
    """Where each analysed row sits. BOS rows (position 0) and special tokens are left out, as in SAE training."""

    cache_row: Tensor
    """int64 [n]: row of the activation cache (window * context_size + position)."""
    token: Tensor
    """int64 [n]: token id."""
    position: Tensor
    """int64 [n]: position in the cache row, 1..context_size-1."""
    sequence: Tensor
    """int64 [n]: cache row index (the bootstrap resamples whole sequences)."""
    window: Tensor
    """int64 [n]: index of the `window_tokens`-long piece of a sequence the row falls in."""
    context_size: int
    n_sequences: int


def row_layout(input_ids: Tensor, max_tokens: int, window_tokens: int, excluded_ids: Iterable[int] = ()) -> RowLayout:
    """Layout of the first whole sequences of `input_ids` [n_seq, context] holding at most `max_tokens` rows,
    their counted rows only (BOS and the tokens of `excluded_ids` left out, `randsae.data.tokens.counted`)."""
    n_seq_all, context_size = input_ids.shape
    n_seq = max(1, min(n_seq_all, max_tokens // context_size))
    row = torch.nonzero(counted(input_ids[:n_seq], excluded_ids)).squeeze(1)
    position, sequence = row % context_size, row // context_size
    windows_per_sequence = -(-context_size // window_tokens)
    return RowLayout(
        cache_row=row,
        token=input_ids[:n_seq].reshape(-1)[row].long(),
        position=position,
        sequence=sequence,
        window=sequence * windows_per_sequence + position // window_tokens,
        context_size=context_size,
        n_sequences=n_seq,
    )


class SparseCodes(NamedTuple):
    """Non-zero latent activations of one SAE on the analysed rows, in COO form."""

    row: Tensor
    """int64 [nnz]: analysed row (index into the RowLayout)."""
    latent: Tensor
    """int64 [nnz]."""
    value: Tensor
    """float32 [nnz], non-zero."""
    n_rows: int
    d_sae: int


def concat_codes(parts: list[SparseCodes], n_rows: int, d_sae: int) -> SparseCodes:
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return SparseCodes(empty, empty, torch.zeros(0), n_rows, d_sae)
    return SparseCodes(
        torch.cat([p.row for p in parts]),
        torch.cat([p.latent for p in parts]),
        torch.cat([p.value for p in parts]),
        n_rows,
        d_sae,
    )


def firing_counts(codes: SparseCodes) -> Tensor:
    """int64 [d_sae]: rows on which each latent is active."""
    return torch.bincount(codes.latent, minlength=codes.d_sae)


def group_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted distinct keys and each key's index among them (numpy's sort-based unique is several times
    faster than torch.unique on CPU)."""
    distinct, inverse = np.unique(keys.numpy(), return_inverse=True)
    return torch.from_numpy(distinct), torch.from_numpy(inverse.reshape(-1))


def between_group_share(latent: Tensor, value: Tensor, group: Tensor, group_size: Tensor, d_sae: int) -> Tensor:
    """Per latent, the share of its activation variance explained by group means, adjusted for chance:

        epsilon^2 = 1 - (SS_within / (n - G)) / (SS_total / (n - 1))

    (the one-way ANOVA eta^2 with the adjusted-R^2 correction, G the non-empty groups). Plain eta^2 of a
    latent unrelated to the groups is about (G - 1)/(n - 1), which depends on bins and sample size;
    epsilon^2 is about 0 then (a little below or above by chance), and 1 when group means explain all.
    `latent`, `value`, `group` describe the non-zero activations; every row belongs to one group and
    `group_size` [n_groups] counts rows per group, so the zeros of inactive rows are counted too.
    Returns float64 [d_sae], NaN where a latent has no variance over these rows.
    """
    n = group_size.sum().double()
    v = value.double()
    total = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, latent, v)
    total_sq = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, latent, v * v)
    n_groups = group_size.numel()
    cells, cell_of = group_keys(latent * n_groups + group)
    cell_sum = torch.zeros(cells.numel(), dtype=torch.float64).index_add_(0, cell_of, v)
    cell_term = cell_sum.square() / group_size[cells % n_groups].double()
    between_raw = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, cells // n_groups, cell_term)
    grand = total.square() / n
    ss_total = total_sq - grand
    ss_between = between_raw - grand
    ss_within = (ss_total - ss_between).clamp_min(0.0)
    n_nonempty = int((group_size > 0).sum())
    has_variance = (ss_total > 1e-12 * total_sq.clamp_min(1e-300)) & (n > n_nonempty)
    mean_square_total = torch.where(has_variance, ss_total, 1.0) / (n - 1)
    share = 1.0 - (ss_within / max(float(n) - n_nonempty, 1.0)) / mean_square_total
    return torch.where(has_variance, share.clamp_max(1.0), torch.nan)
