"""Context dependence: does a latent's activation vary across contexts of the same token?

A latent of a random transformer that "fires on token X" fires on X whatever surrounds it; a latent that
reads context fires on X in some contexts and not others. Per latent, over the rows whose token is
frequent (seen at least `min_token_count` times, so every token has a within-token variance):

    context_dependence_j = (SS_within / (n - G)) / (SS_total / (n - 1)) = 1 - epsilon^2 of a_j on the token

(within-token over total variance, each per degree of freedom, G the frequent tokens: the chance-adjusted
version of SS_within / SS_total). 0 means token identity determines the activation (a lookup); about 1
means token identity tells nothing (it can pass 1 slightly by chance).
Only latents whose top token is frequent get a value (NaN otherwise), since a latent living on rare
tokens would look token-determined for lack of repeats.

An SAE's mean context dependence is taken over a different set of latents in each variant (those whose
top token is frequent), and these sets differ in how often their latents fire: a latent firing on most
occurrences of its token tends to look token-determined, a rare one fires on few of them and is mostly
within-token variance. So a plain mean mixes how contextual latents are with how dense they are.
The mean is therefore standardized by firing rate (direct standardization): latents are binned by the
half decade of their firing rate on the analysed rows (`FIRING_RATE_EDGES`), and every SAE of a layer gets

    mean context dependence = sum_b w_b * (mean over its latents in bin b)

with one common w: the average over the layer's SAEs of each SAE's share of its latents in bin b, over
the bins where every SAE of the layer has a latent (a bin some SAE lacks has no value to weight, so its
latents are left out everywhere; `n_context_eligible` counts the latents that enter). It is the latents'
weighted mean, a latent of bin b weighing w_b / share_b (share_b: the SAE's own share in bin b), so the
bootstrap and Cohen's d see the latents themselves with those weights. Firing rate rather than, say, the
top token is the stratifier because it is defined for every latent of every variant on the same rows; half
decades are coarse enough that the bins stay filled.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from randsae.analysis.codes import SparseCodes, between_group_share

FIRING_RATE_EDGES = tuple(10.0 ** (half / 2) for half in range(-8, -1))
"""Firing-rate bins of the standardization: below 1e-4, half decades up to 1e-1, and 1e-1 or more."""

Key = TypeVar("Key", bound=Hashable)


def context_dependence(codes: SparseCodes, token: Tensor, top_token_id: Tensor, min_token_count: int) -> Tensor:
    """float64 [d_sae]: within-token share of activation variance; `top_token_id` -1 marks dead latents."""
    vocab = int(max(int(token.max()), int(top_token_id.max()))) + 1
    count = torch.bincount(token, minlength=vocab)
    frequent = count >= min_token_count
    result = torch.full((codes.d_sae,), torch.nan, dtype=torch.float64)
    if not bool(frequent.any()):
        return result
    group_of_token = torch.cumsum(frequent.long(), 0) - 1
    row_token = token[codes.row]
    keep = frequent[row_token]
    share = between_group_share(
        codes.latent[keep], codes.value[keep], group_of_token[row_token[keep]], count[frequent], codes.d_sae
    )
    eligible = (top_token_id >= 0) & frequent[top_token_id.clamp_min(0)]
    result[eligible] = 1.0 - share[eligible]
    return result


def firing_rate_bin(firing_count: np.ndarray, n_rows: int) -> np.ndarray:
    """int64 bin of each latent's firing rate (`firing_count` / `n_rows`) among `FIRING_RATE_EDGES`."""
    return np.searchsorted(FIRING_RATE_EDGES, firing_count / n_rows, side="right")


def standardized_weights(
    values: Mapping[Key, np.ndarray], bins: Mapping[Key, np.ndarray]
) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """Per SAE, which of its values enter its firing-rate-standardized mean (a bool mask) and their weights
    (see the module docstring).

    `values` and `bins` hold, per SAE of one layer, the context dependence and firing-rate bin of its
    eligible latents. A latent in bin b weighs w_b / share_b (share_b: the SAE's share of its kept latents
    in bin b), so the weighted mean over the SAE's kept latents is sum_b w_b mean_b.
    """
    n_bins = len(FIRING_RATE_EDGES) + 1
    counts = {key: np.bincount(bins[key], minlength=n_bins) for key in values}
    present = [counts[key] for key in values if values[key].size]
    common = np.all([count > 0 for count in present], axis=0) if present else np.zeros(n_bins, dtype=bool)
    if not common.any():
        return {key: (np.zeros(value.size, dtype=bool), value[:0]) for key, value in values.items()}
    shares = {key: counts[key] * common / max(int((counts[key] * common).sum()), 1) for key in values}
    target = np.mean([shares[key] for key in values if values[key].size], axis=0)
    weighted = {}
    for key in values:
        kept = common[bins[key]]
        weighted[key] = (kept, target[bins[key][kept]] / shares[key][bins[key][kept]])
    return weighted
