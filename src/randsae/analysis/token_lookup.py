"""The token-lookup baseline: how much of the activations is a per-token-id mean, and the SAE beyond it.

Token identity alone explains a large share of residual-stream variance in trained and random models
alike, so an SAE's explained variance says little until it is set beside this baseline: the lookup EV of
the population, 1 - E||x - m(t)||^2 / E||x - mu||^2 with m(t) the true mean of token t.

Estimating it from ~10^4..10^6 train rows over a ~5*10^4-token vocabulary is hard: most tokens are seen a
few times or never, and plain per-token means of a token seen once predict worse than the global mean.
Two steps make the held-out estimate unbiased under a random-effects model (token means m(t) drawn around
a global mean with a between-token variance tau^2 per dimension, rows of token t scattered around m(t) with
a within-token variance sigma^2 per dimension):

1. Empirical-Bayes shrinkage. On the train rows (N rows, K distinct tokens, token t seen n_t times with
   mean xbar_t, global mean g, d dimensions), method of moments pooled over dimensions (the one-way
   random-effects ANOVA estimators):

       sigma^2 = SS_within / ((N - K) d),          SS_within  = sum_i ||x_i - xbar_{t_i}||^2
       tau^2   = max(0, SS_between / d - (K - 1) sigma^2) / (N - sum_t n_t^2 / N),
                                                   SS_between = sum_t n_t ||xbar_t - g||^2
       lambda  = sigma^2 / tau^2
       m(t)    = g + n_t / (n_t + lambda) (xbar_t - g)   (g for a token never seen: n_t = 0)

   m(t) is the posterior mean of token t's mean under the model; sigma^2 = 0 gives lambda = 0 (plain
   means), tau^2 = 0 gives lambda = inf (every token predicted by g).
2. Estimation-error correction. Even shrunk, m(t) misses the true mean of a rare or unseen token (in a
   Zipf simulation of 32k train rows over 49k tokens about a fifth of the held-out rows have a token never
   seen in train), so its held-out error overstates the population lookup's. The posterior variance of
   the true mean, d sigma^2 / (n_t + lambda) summed over dimensions, is the expected excess, and it is
   subtracted from each held-out row's squared error:

       lookup error_i = ||x_i - m(t_i)||^2 - d sigma^2 / (n_{t_i} + lambda)

   (a single row's value can be negative; sums over sequences are not in practice). In the simulation
   the corrected lookup EV lands within 0.01 of the truth where the shrunk one alone is 0.1 low and plain
   means 0.16 low (tests/test_analysis_token_lookup.py). The model's assumptions (the spread of token
   means and the within-token variance do not depend on how frequent a token is) cannot be checked on
   tokens never seen twice; they are the price of a baseline that does not depend on the train size.

With mu the per-dimension mean of the held-out rows, over held-out rows i:

    lookup EV              = 1 - sum lookup error_i / sum ||x_i - mu||^2
    SAE EV                 = 1 - sum ||x_i - xhat_i||^2 / sum ||x_i - mu||^2
    SAE EV beyond lookup   = 1 - sum ||x_i - xhat_i||^2 / sum lookup error_i

The last is the share of what the lookup leaves (x - m(t)) that the SAE reconstructs; it is negative
when the SAE reconstructs worse than the lookup table. This module fits the lookup and defines the
per-row errors; `measure.token_samples` turns them into the three ratios.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from randsae.data.tokens import counted


@dataclasses.dataclass(frozen=True)
class TokenLookup:
    """Shrunk mean activation per token id, and the expected error of each mean (see the module docstring)."""

    token_ids: Tensor
    """int64 [u], sorted: the token ids seen in training."""
    means: Tensor
    """float32 [u, d]: shrunk means m(t)."""
    counts: Tensor
    """float64 [u]: train rows n_t of each token."""
    fallback: Tensor
    """float32 [d]: g, the mean over every training row, predicted for unseen tokens."""
    within_variance: float
    """sigma^2, per dimension."""
    shrinkage: float
    """lambda = sigma^2 / tau^2 (inf when the tokens' means do not spread)."""

    def _lookup(self, token: Tensor) -> tuple[Tensor, Tensor]:
        index = torch.searchsorted(self.token_ids, token).clamp_max(self.token_ids.numel() - 1)
        return index, self.token_ids[index] == token

    def predict(self, token: Tensor) -> Tensor:
        """[n] token ids -> [n, d] lookup predictions."""
        index, seen = self._lookup(token)
        return torch.where(seen.unsqueeze(1), self.means[index], self.fallback)

    def estimation_error(self, token: Tensor) -> Tensor:
        """[n] token ids -> float64 [n]: d sigma^2 / (n_t + lambda), the expected ||m(t) - true mean||^2."""
        if self.within_variance == 0.0:
            return torch.zeros(token.numel(), dtype=torch.float64)
        index, seen = self._lookup(token)
        count = torch.where(seen, self.counts[index], 0.0)
        return self.fallback.numel() * self.within_variance / (count + self.shrinkage)


def sum_rows_by_group(x: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """[n_groups, d] float64 sums of the rows x [n, d] of each group [n], as a sparse one-hot product
    (an order of magnitude faster than index_add_ on CPU)."""
    n = group.numel()
    one_hot = scipy.sparse.csr_matrix(
        (np.ones(n, dtype=np.float32), (group.numpy(), np.arange(n))), shape=(n_groups, n)
    )
    return torch.from_numpy(np.asarray(one_hot @ x.float().numpy(), dtype=np.float64))


def fit_token_lookup(chunks: Iterable[Tensor], input_ids: Tensor, excluded_ids: Iterable[int] = ()) -> TokenLookup:
    """The shrunk per-token means of the activation rows `chunks` (in cache row order), BOS rows and the
    tokens of `excluded_ids` skipped (`randsae.data.tokens.counted`).

    `input_ids` [n_seq, context] are the tokens of the first rows; rows past them are not read, so a
    prefix of the sequences fits the lookup on a prefix of the cache. Rows are centred on the first
    chunk's mean (so sums of squares keep their precision when the mean is large next to the spread),
    each chunk is summed in float32 (fast on CPU) and the chunk sums are accumulated in float64.
    """
    flat = input_ids.reshape(-1).long()
    keep_row = counted(input_ids, excluded_ids)
    distinct, inverse = np.unique(flat.numpy(), return_inverse=True)
    token_ids, index_of_row = torch.from_numpy(distinct), torch.from_numpy(inverse.reshape(-1))
    sums: Tensor | None = None
    center = torch.zeros(0)
    square_sum = 0.0
    start = 0
    for chunk in chunks:
        stop = min(start + chunk.shape[0], flat.numel())
        keep = keep_row[start:stop]
        rows = chunk[: stop - start][keep].float()
        if sums is None:
            center = rows.mean(0) if rows.shape[0] else rows.new_zeros(rows.shape[1])
        rows = rows - center
        chunk_sums = sum_rows_by_group(rows, index_of_row[start:stop][keep], token_ids.numel())
        sums = chunk_sums if sums is None else sums.add_(chunk_sums)
        square_sum += float(rows.square().sum(1).double().sum())
        start = stop
        if start == flat.numel():
            break
    if sums is None:
        raise ValueError("no activation rows to fit the token lookup on")
    counts = torch.bincount(index_of_row[:start][keep_row[:start]], minlength=token_ids.numel()).double()
    seen = counts > 0
    sums, counts = sums[seen], counts[seen]
    n_rows, n_tokens, dim = float(counts.sum()), int(counts.numel()), sums.shape[1]
    total = sums.sum(0)
    token_square = float((sums.square().sum(1) / counts).sum())  # sum_t n_t ||xbar_t - c||^2
    ss_within = max(square_sum - token_square, 0.0)
    ss_between = max(token_square - float(total.square().sum()) / n_rows, 0.0)
    sigma2 = ss_within / ((n_rows - n_tokens) * dim) if n_rows > n_tokens else 0.0
    spread = n_rows - float(counts.square().sum()) / n_rows
    tau2 = max(ss_between / dim - (n_tokens - 1) * sigma2, 0.0) / spread if spread > 0 else 0.0
    shrinkage = 0.0 if sigma2 == 0.0 else (sigma2 / tau2 if tau2 > 0 else math.inf)
    global_mean = total / n_rows
    raw = sums / counts.unsqueeze(1)
    means = global_mean + (counts / (counts + shrinkage)).unsqueeze(1) * (raw - global_mean)
    return TokenLookup(
        token_ids[seen], (means + center).float(), counts, (global_mean + center).float(), sigma2, shrinkage
    )


class TokenErrors(NamedTuple):
    """Squared errors of the SAE and the lookup on every analysed row, and the variance they are set against."""

    sequence: Tensor
    """int64 [n]: sequence of each row (the bootstrap's resampling unit)."""
    sae_error: Tensor
    """float64 [n]: ||x - xhat||^2."""
    lookup_error: Tensor
    """float64 [n]: ||x - m(t)||^2 - d sigma^2 / (n_t + lambda) (the corrected lookup error)."""
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
