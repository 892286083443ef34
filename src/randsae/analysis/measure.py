"""One SAE, one pass over the held-out activations: every per-latent and per-token measurement.

The pass encodes the analysed rows block by block, keeps the sparse codes and the squared errors of the
SAE and of the token lookup, then derives the latent measurements from the codes with scatters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from randsae.analysis.codes import RowLayout, SparseCodes, concat_codes, encode_block, firing_counts
from randsae.analysis.config import AnalysisConfig
from randsae.analysis.context import context_dependence
from randsae.analysis.positional import positional_r2
from randsae.analysis.single_token import top_token_share
from randsae.analysis.token_lookup import TokenErrors, TokenLookup, VarianceAccumulator, explained_variances
from randsae.sae.base import SparseAutoencoder


class LatentMeasures(NamedTuple):
    """Per-latent arrays of one SAE (length d_sae); NaN where a measure is undefined for a latent."""

    firing_count: np.ndarray
    """int64: analysed rows on which the latent is active (0 = dead on the held-out rows)."""
    top_token: np.ndarray
    """int64: token carrying most of the latent's top-window activation; -1 when dead."""
    top_token_share: np.ndarray
    """float64: single-token share (see single_token.py)."""
    positional_r2: np.ndarray
    """float64: R^2 of the activation on position bins (see positional.py)."""
    context_dependence: np.ndarray
    """float64: within-token share of activation variance (see context.py); NaN unless the top token is frequent."""


@dataclasses.dataclass(frozen=True)
class SAEMeasurements:
    """The scalar measurements of one SAE (variant x layer)."""

    variant: str
    layer: int
    d_sae: int
    n_rows: int
    """Analysed held-out rows (BOS rows excluded)."""
    n_alive: int
    """Latents active on at least one analysed row: the denominator of the fractions below."""
    single_token_fraction: float
    mean_top_token_share: float
    positional_fraction: float
    mean_positional_r2: float
    n_context_eligible: int
    """Alive latents whose top token is frequent (the ones with a context dependence)."""
    mean_context_dependence: float
    lookup_ev: float
    sae_ev: float
    sae_ev_beyond_lookup: float
    fuzz_auroc_single_token: float = math.nan
    """Mean fuzzing AUROC of the interp stage over scored single-token latents (NaN without interp scores)."""
    fuzz_auroc_contextual: float = math.nan
    detection_auroc_single_token: float = math.nan
    detection_auroc_contextual: float = math.nan
    n_interp_single_token: int = 0
    """Scored latents labelled single-token (the fuzzing means above average their finite scores)."""
    n_interp_contextual: int = 0
    seed_stable_share: float = math.nan
    """Share of latents reproduced by an SAE of another seed (NaN unless seed stability ran)."""


class SAEAnalysis(NamedTuple):
    measurements: SAEMeasurements
    latents: LatentMeasures
    errors: TokenErrors


def encode_heldout(sae: SparseAutoencoder, blocks: Iterable[Tensor], layout: RowLayout,
                   lookup: TokenLookup) -> tuple[SparseCodes, TokenErrors]:
    """Stream the held-out cache (all rows, in order) and keep what the analysed rows need."""
    n = layout.cache_row.numel()
    codes, sae_error, lookup_error = [], [], []
    variance = VarianceAccumulator(layout.n_sequences, center=lookup.fallback)
    start = 0
    for block in blocks:
        stop = start + block.shape[0]
        first, last = torch.searchsorted(layout.cache_row, torch.tensor([start, stop])).tolist()
        if first < last:
            x = block[layout.cache_row[first:last] - start].float()
            encoded = encode_block(sae, x, first)
            codes.append(encoded.codes)
            sae_error.append((x - encoded.reconstruction).square().sum(1).double())
            lookup_error.append((x - lookup.predict(layout.token[first:last])).square().sum(1).double())
            variance.add(x, layout.sequence[first:last])
        start = stop
        if last == n:
            break
    if sum(e.numel() for e in sae_error) != n:
        raise ValueError(f"held-out activations end before row {int(layout.cache_row[-1])}")
    errors = TokenErrors(layout.sequence, torch.cat(sae_error), torch.cat(lookup_error),
                         variance.sequence_variance())
    return concat_codes(codes, n, sae.cfg.d_sae), errors


def measure_latents(codes: SparseCodes, layout: RowLayout, cfg: AnalysisConfig) -> LatentMeasures:
    top = top_token_share(codes, layout.window, layout.token, cfg.top_windows)
    return LatentMeasures(
        firing_count=firing_counts(codes).numpy(),
        top_token=top.top_token.numpy(),
        top_token_share=top.share.numpy(),
        positional_r2=positional_r2(codes, layout.position, layout.context_size, cfg.position_bins).numpy(),
        context_dependence=context_dependence(codes, layout.token, top.top_token, cfg.min_token_count).numpy(),
    )


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def summarize(variant: str, layer: int, latents: LatentMeasures, errors: TokenErrors,
              cfg: AnalysisConfig) -> SAEMeasurements:
    alive = latents.firing_count > 0
    n_alive = int(alive.sum())

    def fraction(flags: np.ndarray) -> float:
        return float(flags[alive].mean()) if n_alive else math.nan

    ev = explained_variances(errors)
    eligible = np.isfinite(latents.context_dependence)
    return SAEMeasurements(
        variant=variant, layer=layer, d_sae=int(alive.size), n_rows=int(errors.sae_error.numel()), n_alive=n_alive,
        single_token_fraction=fraction(latents.top_token_share >= cfg.single_token_threshold),
        mean_top_token_share=_mean(latents.top_token_share[alive]),
        positional_fraction=fraction(np.nan_to_num(latents.positional_r2) >= cfg.positional_threshold),
        mean_positional_r2=_mean(latents.positional_r2[alive]),
        n_context_eligible=int(eligible.sum()),
        mean_context_dependence=_mean(latents.context_dependence),
        lookup_ev=ev.lookup, sae_ev=ev.sae, sae_ev_beyond_lookup=ev.sae_beyond_lookup,
    )


def analyse_sae(variant: str, layer: int, sae: SparseAutoencoder, heldout_blocks: Iterable[Tensor],
                layout: RowLayout, lookup: TokenLookup, cfg: AnalysisConfig) -> SAEAnalysis:
    """Every measurement of one SAE on the held-out rows of `layout`."""
    codes, errors = encode_heldout(sae, heldout_blocks, layout, lookup)
    latents = measure_latents(codes, layout, cfg)
    return SAEAnalysis(summarize(variant, layer, latents, errors, cfg), latents, errors)
