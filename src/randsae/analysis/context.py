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
"""

from __future__ import annotations

import torch
from torch import Tensor

from randsae.analysis.codes import SparseCodes, between_group_share


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
