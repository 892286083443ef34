"""What the toy sweep measures: feature recovery (MMCS), reconstruction (FVU) and four sparsity measures.

All functions take an optional leading batch of SAEs, so one call scores a whole stacked sweep.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor


def mmcs(features: Tensor, decoder: Tensor) -> Tensor:
    """Mean over ground-truth features [n_features, d] of the best cosine with any decoder row [..., d_sae, d]."""
    unit_features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    unit_decoder = decoder / decoder.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cosines = unit_features @ unit_decoder.transpose(-1, -2)
    return cosines.max(dim=-1).values.mean(dim=-1)


class CodeStats(NamedTuple):
    """Reconstruction and sparsity of SAE codes on an evaluation set, each of shape [...] (one per SAE)."""

    fvu: Tensor
    """Σ‖x − x̂‖² / Σ‖x − μ‖², μ the per-dimension mean of the evaluation set; explained variance is 1 − fvu."""
    l0: Tensor
    """Mean number of active latents per sample."""
    l1: Tensor
    """Mean ‖z‖₁ per sample."""
    l1_over_sqrt_l2: Tensor
    """Mean ‖z‖₁ / √‖z‖₂ per sample (an all-zero code counts 0, its limit)."""
    hoyer: Tensor
    """Mean Hoyer sparsity (√n − ‖z‖₁/‖z‖₂) / (√n − 1): 0 for a flat code, 1 for one active latent
    (an all-zero code counts 1)."""
    dead_fraction: Tensor
    """Share of latents that never fire on the evaluation set."""


def code_stats(x: Tensor, reconstruction: Tensor, codes: Tensor) -> CodeStats:
    """x [n, d]; reconstruction [..., n, d]; codes [..., n, d_sae] (non-negative or signed)."""
    total_variance = (x - x.mean(dim=0)).pow(2).sum()
    fvu = (reconstruction - x).pow(2).sum(dim=(-2, -1)) / total_variance
    magnitude = codes.abs()
    l1 = magnitude.sum(dim=-1)
    l2 = codes.norm(dim=-1)
    nonzero = l2 > 0
    safe_l2 = torch.where(nonzero, l2, torch.ones_like(l2))
    sqrt_n = math.sqrt(codes.shape[-1])
    hoyer = torch.where(nonzero, (sqrt_n - l1 / safe_l2) / (sqrt_n - 1), torch.ones_like(l2))
    return CodeStats(
        fvu=fvu,
        l0=(codes != 0).sum(dim=-1).float().mean(dim=-1),
        l1=l1.mean(dim=-1),
        l1_over_sqrt_l2=torch.where(nonzero, l1 / safe_l2.sqrt(), torch.zeros_like(l1)).mean(dim=-1),
        hoyer=hoyer.mean(dim=-1),
        dead_fraction=(codes == 0).all(dim=-2).float().mean(dim=-1),
    )


SPARSITY_MEASURES = {"l0": False, "l1": False, "l1_over_sqrt_l2": False, "hoyer": True}
"""Each sparsity measure and whether a higher value means sparser (only Hoyer's does)."""


def pareto_front(sparsity: np.ndarray, explained: np.ndarray, higher_is_sparser: bool) -> np.ndarray:
    """Indices of the points no other point beats on both axes (sparser and more explained), sparsest first."""
    sparsity = np.asarray(sparsity, dtype=float)
    explained = np.asarray(explained, dtype=float)
    key = -sparsity if higher_is_sparser else sparsity
    # Sparsest first; among equally sparse points the best explained first.
    order = np.lexsort((-explained, key))
    front, best = [], -np.inf
    for index in order:
        if explained[index] > best:
            front.append(index)
            best = explained[index]
    return np.array(front, dtype=int)


def front_gap(
    front_a: tuple[ArrayLike, ArrayLike],
    front_b: tuple[ArrayLike, ArrayLike],
    higher_is_sparser: bool,
    log_scale: bool,
    n_grid: int = 200,
) -> float:
    """Mean vertical distance a − b between two (sparsity, explained) point sets' Pareto fronts.

    Each front is read as a step function: the best explained variance reachable at a given sparsity or
    sparser. The mean is over a grid spanning the sparsity range both fronts cover (log-spaced when
    `log_scale`, where points at zero are left out); NaN when the ranges do not overlap.
    """

    def on_axis(points: tuple[ArrayLike, ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
        sparsity, explained = (np.asarray(values, dtype=float) for values in points)
        keep = sparsity > 0 if log_scale else np.isfinite(sparsity)
        return sparsity[keep], explained[keep]

    def best_at(points: tuple[np.ndarray, np.ndarray], grid: np.ndarray) -> np.ndarray:
        sparsity, explained = points
        reachable = sparsity[None, :] >= grid[:, None] if higher_is_sparser else sparsity[None, :] <= grid[:, None]
        return np.where(reachable, explained[None, :], -np.inf).max(axis=1)

    a, b = on_axis(front_a), on_axis(front_b)
    if min(a[0].size, b[0].size) == 0:
        return float("nan")
    low = max(a[0].min(), b[0].min())
    high = min(a[0].max(), b[0].max())
    if not low <= high:
        return float("nan")
    grid = np.geomspace(low, high, n_grid) if log_scale else np.linspace(low, high, n_grid)
    return float(np.mean(best_at(a, grid) - best_at(b, grid)))
