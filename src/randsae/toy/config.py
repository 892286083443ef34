"""Settings of a toy run: the planted-feature data, the random networks and the ReLU-L1 sweep.

A TOML file holds the same flat keys as `ToyConfig`; anything it leaves out keeps the default below,
which is the small sweep that finishes in minutes (`configs/toy-default.toml` spells it out;
`configs/toy-paper.toml` is the paper's full sweep).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from randsae.errors import UserError
from randsae.toml_config import build_dataclass, read_toml

NETWORK_PATTERN = re.compile(r"mlp([2-9]|[1-9][0-9])|transformer_block")
"""`mlpN`: N random linear layers with ReLU between (the paper's is mlp2); `transformer_block`: one random
pre-LN causal transformer block."""


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """One toy experiment; every field is a TOML key of the same name."""

    n_features: int = 512
    """Planted ground-truth features (n_s)."""
    n_dims: int = 256
    """Dimension of the data (n_d)."""
    mean_active: float = 5.0
    """Average number of features active in a sample (m)."""
    frequency_decay: float = 0.99
    """Feature i fires with probability ∝ u^(decay·i), u the correlated uniform (Sharkey et al.'s λ)."""
    n_samples: int = 10_000
    """Samples generated per dataset (train + test)."""
    test_fraction: float = 0.1
    """Share of the samples held out for the metrics."""
    networks: tuple[str, ...] = ("mlp2",)
    """Random networks the data is passed through; the untouched data is always included."""
    center_data: bool = True
    """Subtract each dataset's mean before the SAEs see it. A random network adds a constant output
    net(0) larger than the signal, which a decoder without bias must spend latents on; the paper did not
    center (false reproduces it, and then features are not recovered after the network)."""
    l1_log10_min: float = -0.5
    """log10 of the smallest L1 coefficient λ of the sweep."""
    l1_log10_max: float = 1.5
    """log10 of the largest L1 coefficient λ of the sweep."""
    l1_count: int = 6
    """How many L1 coefficients λ, log-spaced from 10^l1_log10_min to 10^l1_log10_max."""
    latent_counts: tuple[int, ...] = (512,)
    """SAE widths to sweep."""
    seeds: tuple[int, ...] = (0,)
    """SAE initialization seeds; every (λ, width, seed) is its own SAE."""
    epochs: int = 16
    """Passes over the training samples per SAE (the paper: 100)."""
    batch_size: int = 256
    """Training samples per Adam step."""
    learning_rate: float = 1e-2
    """The paper's 1e-3 goes with its 100 epochs: in 8 it recovered nothing here; 1e-2 recovers in 16."""
    data_seed: int = 0
    """Seeds the features, the samples, the Gaussian control and the random networks."""
    device: str = "cpu"
    """Where the SAEs train: `cpu`, or `cuda` for the paper's full sweep."""
    workers: int = 2
    """On CPU, sweeps train in this many single-threaded processes at once (one per core is fastest, and
    unlike intra-op threads it degrades gracefully on a busy machine). 1: train in this process."""

    def __post_init__(self) -> None:
        positive = ("n_features", "n_dims", "n_samples", "l1_count", "epochs", "batch_size", "workers")
        for name in positive:
            if getattr(self, name) < 1:
                _bad(name, getattr(self, name), "a positive integer")
        if not 0 < self.mean_active <= self.n_features:
            _bad("mean_active", self.mean_active, f"a number in (0, n_features={self.n_features}]")
        if not self.frequency_decay > 0:
            _bad("frequency_decay", self.frequency_decay, "a positive number (the paper uses 0.99)")
        if not 0 < self.test_fraction < 1:
            _bad("test_fraction", self.test_fraction, "a fraction strictly between 0 and 1")
        n_test = round(self.n_samples * self.test_fraction)
        if n_test < 1 or self.n_samples - n_test < self.batch_size:
            _bad("n_samples", self.n_samples, "enough samples for one test sample and one training batch")
        if not self.learning_rate > 0:
            _bad("learning_rate", self.learning_rate, "a positive number")
        if self.l1_log10_min > self.l1_log10_max:
            _bad("l1_log10_min", self.l1_log10_min, f"at most l1_log10_max={self.l1_log10_max}")
        for name in ("latent_counts", "seeds", "networks"):
            values = getattr(self, name)
            if len(set(values)) != len(values) or (name != "networks" and not values):
                _bad(
                    name,
                    list(values),
                    "a non-empty list without repeats" if name != "networks" else "a list without repeats",
                )
        if any(count < 1 for count in self.latent_counts):
            _bad("latent_counts", list(self.latent_counts), "positive integers")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            _bad("device", self.device, "'cpu' or 'cuda'")
        for network in self.networks:
            if not NETWORK_PATTERN.fullmatch(network):
                _bad("networks", network, "'mlp2' (the paper's), 'mlpN' for a deeper one, or 'transformer_block'")

    @property
    def l1_coefficients(self) -> tuple[float, ...]:
        return tuple(np.logspace(self.l1_log10_min, self.l1_log10_max, self.l1_count).tolist())


def _bad(name: str, value: Any, expected: str) -> None:
    raise UserError(f"toy config: {name} = {value!r} is invalid", f"Use {expected}")


def load_toy_config(path: str | Path | None = None) -> ToyConfig:
    """Read a flat TOML file of `ToyConfig` keys; missing keys keep their defaults (no file: all defaults)."""
    if path is None:
        return ToyConfig()
    return build_dataclass(ToyConfig, read_toml(path, "toy config"))
