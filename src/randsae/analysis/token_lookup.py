"""The token-lookup baseline: how much of the activations is a per-token-id mean, and the SAE beyond it.

Token identity alone explains a large share of residual-stream variance in trained and random models
alike, so an SAE's explained variance says little until it is set beside this baseline. With m(t) the
mean activation of token t on the train rows (the train mean for tokens never seen there) and mu the
per-dimension mean of the held-out rows, over held-out rows i:

    lookup EV              = 1 - sum ||x_i - m(t_i)||^2 / sum ||x_i - mu||^2
    SAE EV                 = 1 - sum ||x_i - xhat_i||^2 / sum ||x_i - mu||^2
    SAE EV beyond lookup   = 1 - sum ||x_i - xhat_i||^2 / sum ||x_i - m(t_i)||^2

The last is the share of what the lookup leaves (x - m(t)) that the SAE reconstructs; it is negative
when the SAE reconstructs worse than the lookup table. This module fits the lookup and defines the
per-row errors; `measure.token_samples` turns them into the three ratios.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from randsae.data.tokens import counted


@dataclasses.dataclass(frozen=True)
class TokenLookup:
    """Mean activation per token id."""

    token_ids: Tensor
    """int64 [u], sorted: the token ids seen in training."""
    means: Tensor
    """float32 [u, d]."""
    fallback: Tensor
    """float32 [d]: mean over every training row, predicted for unseen tokens."""

    def predict(self, token: Tensor) -> Tensor:
        """[n] token ids -> [n, d] lookup predictions."""
        index = torch.searchsorted(self.token_ids, token).clamp_max(self.token_ids.numel() - 1)
        seen = self.token_ids[index] == token
        return torch.where(seen.unsqueeze(1), self.means[index], self.fallback)


def sum_rows_by_group(x: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """[n_groups, d] float64 sums of the rows x [n, d] of each group [n], as a sparse one-hot product
    (an order of magnitude faster than index_add_ on CPU)."""
    n = group.numel()
    one_hot = scipy.sparse.csr_matrix(
        (np.ones(n, dtype=np.float32), (group.numpy(), np.arange(n))), shape=(n_groups, n)
    )
    return torch.from_numpy(np.asarray(one_hot @ x.float().numpy(), dtype=np.float64))


def fit_token_lookup(chunks: Iterable[Tensor], input_ids: Tensor, excluded_ids: Iterable[int] = ()) -> TokenLookup:
    """Per-token means of the activation rows `chunks` (in cache row order), BOS rows and the tokens of
    `excluded_ids` skipped (`randsae.data.tokens.counted`).

    `input_ids` [n_seq, context] are the tokens of the first rows; rows past them are not read, so a
    prefix of the sequences fits the lookup on a prefix of the cache. Each chunk is summed in float32
    (fast on CPU) and the chunk sums are accumulated in float64.
    """
    flat = input_ids.reshape(-1).long()
    keep_row = counted(input_ids, excluded_ids)
    distinct, inverse = np.unique(flat.numpy(), return_inverse=True)
    token_ids, index_of_row = torch.from_numpy(distinct), torch.from_numpy(inverse.reshape(-1))
    sums: Tensor | None = None
    start = 0
    for chunk in chunks:
        stop = min(start + chunk.shape[0], flat.numel())
        keep = keep_row[start:stop]
        chunk_sums = sum_rows_by_group(chunk[: stop - start][keep], index_of_row[start:stop][keep], token_ids.numel())
        sums = chunk_sums if sums is None else sums.add_(chunk_sums)
        start = stop
        if start == flat.numel():
            break
    if sums is None:
        raise ValueError("no activation rows to fit the token lookup on")
    counts = torch.bincount(index_of_row[:start][keep_row[:start]], minlength=token_ids.numel()).double()
    seen = counts > 0
    means = sums[seen] / counts[seen].unsqueeze(1)
    fallback = sums.sum(0) / counts.sum()
    return TokenLookup(token_ids[seen], means.float(), fallback.float())


class TokenErrors(NamedTuple):
    """Squared errors of the SAE and the lookup on every analysed row, and the variance they are set against."""

    sequence: Tensor
    """int64 [n]: sequence of each row (the bootstrap's resampling unit)."""
    sae_error: Tensor
    """float64 [n]: ||x - xhat||^2."""
    lookup_error: Tensor
    """float64 [n]: ||x - m(t)||^2."""
    sequence_variance: Tensor
    """float64 [n_sequences]: sum over the sequence's rows of ||x - mu||^2."""


class VarianceAccumulator:
    """Streams rows and returns per-sequence sums of ||x - mu||^2, mu the mean of all rows streamed.

    Rows are centred on a reference close to mu (the train mean) before summing, so the float64 identity
    sum ||x - mu||^2 = sum ||x - c||^2 - 2 (mu - c) . sum (x - c) + n ||mu - c||^2 loses no precision
    even when the activations' mean is large next to their spread.
    """

    def __init__(self, n_sequences: int, center: Tensor):
        self.center = center.float()
        self.row_sum = torch.zeros(n_sequences, center.numel(), dtype=torch.float64)
        self.square_sum = torch.zeros(n_sequences, dtype=torch.float64)
        self.count = torch.zeros(n_sequences, dtype=torch.float64)

    def add(self, x: Tensor, sequence: Tensor) -> None:
        """Rows x [n, d] of the sequences `sequence` [n] (ascending, as rows come in cache order)."""
        centred = x - self.center
        first, last = int(sequence[0]), int(sequence[-1]) + 1
        self.row_sum[first:last] += sum_rows_by_group(centred, sequence - first, last - first)
        self.square_sum.index_add_(0, sequence, centred.square().sum(1).double())
        self.count.index_add_(0, sequence, torch.ones(sequence.numel(), dtype=torch.float64))

    def sequence_variance(self) -> Tensor:
        shift = self.row_sum.sum(0) / self.count.sum()
        return self.square_sum - 2.0 * (self.row_sum @ shift) + self.count * shift.dot(shift)
