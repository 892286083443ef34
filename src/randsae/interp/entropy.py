"""Token-distribution entropy of a latent (paper v2): how spread its activation mass is over token ids.

Each positive activation in the explanation windows is added to a histogram over the token id it sits on;
the Shannon entropy (bits) of the normalized histogram is 0 for a latent that fires on one token only and
grows as it fires on many. The paper finds it high for the control, rising with depth in trained models,
and low and flat in randomized ones.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TokenMass(NamedTuple):
    """Activation mass per token id, largest first."""

    token_ids: np.ndarray
    """int64 [t]: distinct token ids carrying positive activation."""
    mass: np.ndarray
    """float64 [t]: summed activation on each, descending."""


def token_activation_mass(token_ids: np.ndarray, activations: np.ndarray) -> TokenMass:
    """Sum the positive activations [m, W] per token id [m, W]."""
    positive = activations > 0
    ids, inverse = np.unique(token_ids[positive], return_inverse=True)
    mass = np.bincount(inverse, weights=activations[positive].astype(np.float64), minlength=len(ids))
    order = np.argsort(-mass, kind="stable")
    return TokenMass(ids[order], mass[order])


def token_entropy(token_ids: np.ndarray, activations: np.ndarray) -> float:
    """Shannon entropy in bits of the activation mass over token ids (NaN when nothing fires)."""
    mass = token_activation_mass(token_ids, activations).mass
    if mass.sum() <= 0:
        return float("nan")
    p = mass / mass.sum()
    return float(-(p * np.log2(p)).sum())
