"""Single-token latents: how much of a latent's top-window activation one token carries.

An explainer sees a latent's top windows; when one token carries nearly all of the activation there,
"fires on token X" explains it, whatever the model computes. The critique's point is that random
transformers keep exactly these latents.

    share_j = max_t  sum_{i in top windows of j, token_i = t} a_ij  /  sum_{i in top windows of j} a_ij

The top windows of latent j are the `top_windows` windows with the largest max activation of j.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from randsae.analysis.codes import SparseCodes, group_keys


class TopTokenShare(NamedTuple):
    share: Tensor
    """float64 [d_sae]: share of top-window activation mass on the top token; NaN for dead latents."""
    top_token_id: Tensor
    """int64 [d_sae]: the token carrying that mass (ties: smallest id); -1 for dead latents."""


def _rank_within(group: Tensor, score: Tensor) -> Tensor:
    """Rank (0 = largest score) of every item among the items of its group."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    counts = torch.bincount(group)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel()) - starts[group[order]]
    return rank


def top_token_share(codes: SparseCodes, window: Tensor, token: Tensor, top_windows: int) -> TopTokenShare:
    """Single-token share of every latent; `window` and `token` are per analysed row."""
    d_sae = codes.d_sae
    share = torch.full((d_sae,), torch.nan, dtype=torch.float64)
    top = torch.full((d_sae,), -1, dtype=torch.long)
    if codes.value.numel() == 0:
        return TopTokenShare(share, top)
    value = codes.value.double()
    n_windows = int(window.max()) + 1
    pairs, pair_of = group_keys(codes.latent * n_windows + window[codes.row])
    pair_max = torch.zeros(pairs.numel(), dtype=torch.float64).scatter_reduce_(
        0, pair_of, value, "amax", include_self=False
    )
    in_top = _rank_within(pairs // n_windows, pair_max) < top_windows
    keep = in_top[pair_of]
    latent, tok, value = codes.latent[keep], token[codes.row[keep]], value[keep]

    vocab = int(token.max()) + 1
    cells, cell_of = group_keys(latent * vocab + tok)
    mass = torch.zeros(cells.numel(), dtype=torch.float64).index_add_(0, cell_of, value)
    cell_latent, cell_token = cells // vocab, cells % vocab
    best = torch.zeros(d_sae, dtype=torch.float64).scatter_reduce_(0, cell_latent, mass, "amax", include_self=False)
    total = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, latent, value)
    is_best = mass == best[cell_latent]
    big = torch.iinfo(torch.long).max
    best_token = torch.full((d_sae,), big, dtype=torch.long).scatter_reduce_(
        0, cell_latent[is_best], cell_token[is_best], "amin"
    )
    alive = total > 0
    share[alive] = best[alive] / total[alive]
    top[alive] = best_token[alive]
    return TopTokenShare(share, top)
