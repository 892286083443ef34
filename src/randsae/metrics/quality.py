"""Reconstruction quality of an SAE on held-out activations (SAEBench-style definitions).

Explained variance comes in two named forms because tools disagree:
- pooled: 1 - Σ‖x - x̂‖² / Σ‖x - μ‖², μ the per-dimension mean of the whole evaluation set;
- per-token: the mean over tokens of 1 - ‖x - x̂‖² / ‖x - μ_batch‖², μ_batch the mean of the
  token's evaluation batch (what older SAELens versions report; noisier, and biased by batch size).
Neither is taken about zero, which flatters models with a large mean residual direction.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import torch
from torch import Tensor

DENSE_THRESHOLD = 0.1
"""A latent firing on more than this share of tokens counts as dense."""


@dataclasses.dataclass(frozen=True)
class ReconstructionMetrics:
    explained_variance_pooled: float
    """1 - Σ‖x - x̂‖² / Σ‖x - μ‖² over the whole evaluation set."""
    explained_variance_per_token: float
    """Mean over tokens of 1 - ‖x - x̂‖² / ‖x - μ_batch‖² (older SAELens' explained variance)."""
    mse: float
    """Mean over tokens and dimensions of (x - x̂)²."""
    cosine: float
    """Mean over tokens of cos(x, x̂)."""
    l0: float
    """Mean number of active latents per token."""
    l1: float
    """Mean over tokens of the sum of latent activations."""
    dead_fraction: float
    """Latents that never fired on the evaluation tokens."""
    dense_fraction: float
    """Latents firing on more than 10% of the evaluation tokens."""
    n_tokens: int


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0 (a score with no scale is undefined, not an error)."""
    return numerator / denominator if denominator != 0 else math.nan


class ReconstructionAccumulator:
    """Streams evaluation batches (x, x̂, z) and returns `ReconstructionMetrics` at the end.

    Sums are kept in float64 so a pooled variance over millions of tokens stays exact enough.
    """

    def __init__(self, d_in: int, d_sae: int):
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_x2 = torch.zeros(d_in, dtype=torch.float64)
        self.sum_err2 = 0.0
        self.sum_ev_per_token = 0.0
        self.sum_cos = 0.0
        self.sum_l0 = 0.0
        self.sum_l1 = 0.0
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)

    @torch.no_grad()
    def add(self, x: Tensor, x_hat: Tensor, z: Tensor) -> None:
        """x, x̂ [n, d_in]; z [n, d_sae] latent activations of one evaluation batch."""
        x64, err = x.double().cpu(), (x - x_hat).double().cpu()
        self.n += x.shape[0]
        self.sum_x += x64.sum(0)
        self.sum_x2 += (x64**2).sum(0)
        err2 = (err**2).sum(1)
        self.sum_err2 += err2.sum().item()
        batch_var = ((x64 - x64.mean(0)) ** 2).sum(1)
        self.sum_ev_per_token += (1 - err2 / batch_var.clamp_min(1e-12)).sum().item()
        self.sum_cos += torch.nn.functional.cosine_similarity(x.float(), x_hat.float(), dim=1).sum().item()
        active = z > 0
        self.sum_l0 += active.sum().item()
        self.sum_l1 += z.float().sum().item()
        self.fire_count += active.sum(0).cpu()

    def result(self) -> ReconstructionMetrics:
        n, d_in = self.n, self.sum_x.shape[0]
        total_var = (self.sum_x2 - self.sum_x**2 / n).sum().item()
        return ReconstructionMetrics(
            explained_variance_pooled=1 - ratio(self.sum_err2, total_var),
            explained_variance_per_token=self.sum_ev_per_token / n,
            mse=self.sum_err2 / (n * d_in),
            cosine=self.sum_cos / n,
            l0=self.sum_l0 / n,
            l1=self.sum_l1 / n,
            dead_fraction=(self.fire_count == 0).float().mean().item(),
            dense_fraction=(self.fire_count > DENSE_THRESHOLD * n).float().mean().item(),
            n_tokens=n,
        )


def reconstruction_metrics(batches: Iterable[tuple[Tensor, Tensor, Tensor]]) -> ReconstructionMetrics:
    """Metrics over evaluation batches of (x, x̂, z)."""
    accumulator: ReconstructionAccumulator | None = None
    for x, x_hat, z in batches:
        accumulator = accumulator or ReconstructionAccumulator(x.shape[1], z.shape[1])
        accumulator.add(x, x_hat, z)
    if accumulator is None:
        raise ValueError("no evaluation batches")
    return accumulator.result()
