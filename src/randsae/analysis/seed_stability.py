"""Seed stability: do two SAEs trained on the same activations with different seeds find the same latents?

Latents are matched one-to-one by the Hungarian algorithm on the cosine similarity of decoder rows
(Paulo & Belrose 2025); a latent counts as reproduced when its partner's cosine is at least the
threshold (0.7 by default). The share is over the live latents of the first SAE, those active on at
least one analysed held-out row (`n_alive`): a dead latent's decoder row is whatever training left it,
so counting dead latents would lower the share of an SAE by how many latents it lets die, not by how
reproducible its features are:

    stable share = #{j live : cos(W_dec_a[j], W_dec_b[partner(j)]) >= threshold} / #{j live}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from randsae.data.activations import ActivationCache
from randsae.data.tokens import counted
from randsae.errors import UserError
from randsae.run_dir import SAE_TRAINING_FILE
from randsae.sae.base import SparseAutoencoder, load_sae
from randsae.sae.trainer import TrainConfig, train_sae


class LatentMatch(NamedTuple):
    partner: np.ndarray
    """int64 [d_sae_a]: latent of SAE b matched to each latent of SAE a (-1 when b has fewer latents)."""
    cosine: np.ndarray
    """float64 [d_sae_a]: decoder-row cosine with the partner (NaN when unmatched)."""


def match_decoders(w_dec_a: Tensor, w_dec_b: Tensor) -> LatentMatch:
    """One-to-one matching of decoder rows [d_sae, d_in] maximizing the summed cosine similarity."""
    a = torch.nn.functional.normalize(w_dec_a.detach().double(), dim=1)
    b = torch.nn.functional.normalize(w_dec_b.detach().double(), dim=1)
    cosine = (a @ b.T).numpy()
    rows, cols = linear_sum_assignment(cosine, maximize=True)
    partner = np.full(a.shape[0], -1, dtype=np.int64)
    matched = np.full(a.shape[0], np.nan)
    partner[rows] = cols
    matched[rows] = cosine[rows, cols]
    return LatentMatch(partner, matched)


def reproduced(cosine: np.ndarray, threshold: float) -> np.ndarray:
    """Bool per latent of SAE a: its matched partner's cosine is at least `threshold` (its mean is the
    stable share; unmatched latents count as not reproduced)."""
    return cosine >= threshold  # False for NaN (unmatched)


def live_reproduced(cosine: np.ndarray, firing_count: np.ndarray, threshold: float) -> np.ndarray:
    """Bool per live latent of SAE a (`firing_count` > 0 on the held-out rows): reproduced or not; its
    mean is the stable share, its length the live latents behind it."""
    return reproduced(cosine, threshold)[firing_count > 0]


def second_seed_sae(
    first: SparseAutoencoder,
    first_folder: Path,
    train_cache: ActivationCache,
    out_folder: Path,
    seed: int,
    *,
    train_ids: Tensor | None = None,
    excluded_ids: tuple[int, ...] = (),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> SparseAutoencoder:
    """The SAE `first` retrained with `seed` on the same activations and settings (saved, reused when present).

    The training settings come from the first SAE's `training.json` and it trains on the same rows of the
    train cache (`train_ids`' tokens but `excluded_ids`; without `train_ids`, all but BOS), so only the seed
    differs.
    """
    if (out_folder / SAE_TRAINING_FILE).is_file():
        return load_sae(out_folder)
    log_path = first_folder / SAE_TRAINING_FILE
    if not log_path.is_file():
        raise UserError(
            f"cannot retrain {first_folder} with another seed: it has no {SAE_TRAINING_FILE}",
            "Train the SAEs with `randsae run`, or turn analysis.seed_stability off",
        )
    log = json.loads(log_path.read_text())
    if log.get("seed") == seed:
        raise UserError(
            f"analysis.stability_seed = {seed} is the seed {first_folder} was trained with",
            "Set analysis.stability_seed to another value",
        )
    train_cfg = TrainConfig(**log["config"])
    sae_cfg = dataclasses.replace(first.cfg, metadata={**first.cfg.metadata, "seed": seed})
    keep = None if train_ids is None else counted(train_ids, excluded_ids, bos=not train_cfg.skip_bos)
    result = train_sae(train_cache, train_cfg, sae_cfg, seed=seed, device=device, progress=progress, keep=keep)
    result.save(out_folder)
    return result.sae.cpu()
