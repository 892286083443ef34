"""Positional latents: how much of a latent's activation token position alone explains.

Trained transformers grow latents that track where a token sits in the context; a random transformer
has no reason to. Per latent, over every analysed held-out row (zeros included), the one-way ANOVA of
a_j on the position bin, adjusted for chance (see codes.between_group_share):

    R^2_j = 1 - (SS_within / (n - B)) / (SS_total / (n - 1))

1 for a latent that is a function of the bin; about 0 for one unrelated to position, whatever the number
of bins B and rows n. Bins are equal-width over positions 1..context-1, or one per position when there
are few enough.
"""

from __future__ import annotations

import torch
from torch import Tensor

from randsae.analysis.codes import SparseCodes, between_group_share


def position_bin(position: Tensor, context_size: int, n_bins: int) -> Tensor:
    """Bin index of positions 1..context_size-1 into min(n_bins, context_size - 1) equal-width bins."""
    n_positions = context_size - 1
    return (position - 1) * min(n_bins, n_positions) // n_positions


def positional_r2(codes: SparseCodes, position: Tensor, context_size: int, n_bins: int) -> Tensor:
    """float64 [d_sae]: R^2 of each latent's activation on position bins; NaN for dead latents."""
    bins = position_bin(position, context_size, n_bins)
    bin_size = torch.bincount(bins, minlength=min(n_bins, context_size - 1))
    return between_group_share(codes.latent, codes.value, bins[codes.row], bin_size, codes.d_sae)
