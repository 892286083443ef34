"""Toy data with planted features in superposition (Sharkey, Braun & Millidge 2022) and its Gaussian control.

A sample is a sparse non-negative combination of n_s unit vectors in n_d < n_s dimensions. Which features
fire is correlated: a Gaussian g with covariance AAᵀ (A standard normal, as in the paper's code) is mapped
through the normal CDF to u ∈ (0, 1), feature i fires with probability p_i ∝ u_i^(decay·i) rescaled so the
p_i sum to `mean_active`, and a firing feature gets a U[0, 1) coefficient.

With A standard normal, g_i has variance ≈ n_s, so Φ(g_i) is nearly 0 or 1: about half the features
are shut off in each sample and the index decay only shapes the few in between. Frequencies therefore
decay only mildly with the index (≈ 2% for feature 0, ≈ 1% for most), which is what the paper ran.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ToyData(NamedTuple):
    samples: Tensor
    """[n_samples, n_dims] float32."""
    features: Tensor
    """[n_features, n_dims] unit-norm ground-truth directions."""
    coefficients: Tensor
    """[n_samples, n_features] non-negative; zero where a feature is off. samples = coefficients @ features."""


def generate_toy_data(
    n_samples: int, n_features: int, n_dims: int, mean_active: float, frequency_decay: float, generator: torch.Generator
) -> ToyData:
    features = torch.randn(n_features, n_dims, generator=generator)
    features /= features.norm(dim=1, keepdim=True)
    mixing = torch.randn(n_features, n_features, generator=generator)
    # g = ε Aᵀ has covariance AAᵀ without forming or factorizing it.
    correlated = torch.randn(n_samples, n_features, generator=generator) @ mixing.T
    decay_power = frequency_decay * torch.arange(n_features, dtype=torch.float32)
    probability = torch.special.ndtr(correlated) ** decay_power
    probability = probability * (mean_active / probability.sum(dim=1, keepdim=True))
    fires = torch.rand(n_samples, n_features, generator=generator) < probability.clamp(max=1.0)
    coefficients = fires * torch.rand(n_samples, n_features, generator=generator)
    return ToyData(samples=coefficients @ features, features=features, coefficients=coefficients)


def gaussian_control(samples: Tensor, generator: torch.Generator) -> Tensor:
    """I.i.d. Gaussian entries with the samples' scalar mean and standard deviation: same scale, no features."""
    noise = torch.randn(samples.shape, generator=generator)
    return noise * samples.std() + samples.mean()


def unit_rms(samples: Tensor) -> Tensor:
    """Divide by the root-mean-square entry, so one λ grid suits every dataset.

    A single scalar keeps every linear structure (the planted directions, their non-negative
    coefficients), which per-sample standardization would not. The paper standardizes each sample
    inside its autoencoder; both put the mean squared entry at about 1.
    """
    return samples / samples.pow(2).mean().sqrt()
