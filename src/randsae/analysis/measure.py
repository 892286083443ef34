"""One SAE, one pass over the held-out activations: every per-latent and per-token measurement.

The pass encodes the analysed rows chunk by chunk, keeps the sparse codes and the squared errors of the
SAE and of the token lookup, then derives the latent measurements from the codes with scatters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from randsae.analysis.codes import RowLayout, SparseCodes, concat_codes, firing_counts
from randsae.analysis.config import AnalysisConfig
from randsae.analysis.context import context_dependence, firing_rate_bin, standardized_weights
from randsae.analysis.interp_split import KINDS
from randsae.analysis.positional import positional_r2
from randsae.analysis.separation import MeanSample, RatioSample, Sample
from randsae.analysis.single_token import top_token_share
from randsae.analysis.token_lookup import TokenErrors, TokenLookup, VarianceAccumulator
from randsae.run_dir import SAEKey
from randsae.sae.base import SparseAutoencoder


class LatentMeasures(NamedTuple):
    """Per-latent arrays of one SAE (length d_sae); NaN where a measure is undefined for a latent."""

    firing_count: np.ndarray
    """int64: analysed rows on which the latent is active (0 = dead on the held-out rows)."""
    top_token_id: np.ndarray
    """int64: token carrying most of the latent's top-window activation; -1 when dead."""
    top_token_share: np.ndarray
    """float64: share of the top-window activation mass on that token (see single_token.py); the interp
    stage's `explanation_top_token_share` is over the explanation windows instead."""
    positional_r2: np.ndarray
    """float64: R^2 of the activation on position bins (see positional.py)."""
    context_dependence: np.ndarray
    """float64: within-token share of activation variance (see context.py); NaN unless the top token is frequent."""


@dataclasses.dataclass(frozen=True)
class SAEMeasurements:
    """The scalar measurements of one SAE (variant x layer, one replicate)."""

    variant: str
    layer: int
    variant_seed: int | None
    """The variant's random draw when the run has several (`replicates.variant_seeds`); else None."""
    sae_seed: int | None
    """The SAE seed when the run has several (`replicates.sae_seeds`); else None."""
    d_sae: int
    n_rows: int
    """Analysed held-out rows (BOS rows excluded)."""
    n_alive: int
    """Latents active on at least one analysed row."""
    n_measured: int
    """Latents active on at least `min_activations` analysed rows: the denominator of the fractions and
    means of the latent metrics below."""
    single_token_fraction: float
    mean_top_token_share: float
    positional_fraction: float
    mean_positional_r2: float
    n_context_eligible: int
    """Measured latents whose top token is frequent (the ones with a context dependence), in the firing-rate
    bins every SAE of the layer has (see context.py)."""
    mean_context_dependence: float
    """Their mean context dependence, standardized to the layer's common firing-rate distribution."""
    lookup_ev: float
    sae_ev: float
    sae_ev_beyond_lookup: float
    """The metric fields hold the value of the sample of the same name (see latent_samples, token_samples);
    the ones below stay NaN unless the auto-interp table or seed stability provides their samples."""
    fuzz_auroc: float = math.nan
    """Mean fuzzing AUROC of the interp stage over every scored latent with a score (NaN without interp)."""
    detection_auroc: float = math.nan
    """The same for detection."""
    fuzz_auroc_single_token: float = math.nan
    """Mean fuzzing AUROC of the interp stage over scored single-token latents (NaN without interp scores)."""
    fuzz_auroc_contextual: float = math.nan
    detection_auroc_single_token: float = math.nan
    detection_auroc_contextual: float = math.nan
    n_interp_single_token: int = 0
    """Scored latents labelled single-token (the fuzzing means above average their finite scores)."""
    n_interp_contextual: int = 0
    seed_stable_share: float = math.nan
    """Share of the `n_alive` live latents reproduced by an SAE of another seed (NaN unless seed stability ran)."""


class SAEAnalysis(NamedTuple):
    """What one pass over the held-out activations leaves: the arrays every value is derived from."""

    latents: LatentMeasures
    errors: TokenErrors


@torch.no_grad()
def encode_heldout(
    sae: SparseAutoencoder, chunks: Iterable[Tensor], layout: RowLayout, lookup: TokenLookup
) -> tuple[SparseCodes, TokenErrors]:
    """Stream the held-out cache (all rows, in order) and keep what the analysed rows need."""
    n = layout.cache_row.numel()
    device = next(sae.parameters()).device
    codes, sae_error, lookup_error = [], [], []
    variance = VarianceAccumulator(layout.n_sequences, center=lookup.fallback)
    start = 0
    for chunk in chunks:
        stop = start + chunk.shape[0]
        first, last = torch.searchsorted(layout.cache_row, torch.tensor([start, stop])).tolist()
        if first < last:
            x = chunk[layout.cache_row[first:last] - start].float()
            latents, reconstruction = sae.encode_sparse(x.to(device))
            latents, reconstruction = latents.to("cpu"), reconstruction.cpu()
            codes.append(
                SparseCodes(latents.rows + first, latents.latents, latents.values.float(), x.shape[0], sae.cfg.d_sae)
            )
            sae_error.append((x - reconstruction).square().sum(1).double())
            token = layout.token[first:last]
            lookup_error.append((x - lookup.predict(token)).square().sum(1).double() - lookup.estimation_error(token))
            variance.add(x, layout.sequence[first:last])
        start = stop
        if last == n:
            break
    if sum(e.numel() for e in sae_error) != n:
        raise ValueError(f"held-out activations end before row {int(layout.cache_row[-1])}")
    errors = TokenErrors(layout.sequence, torch.cat(sae_error), torch.cat(lookup_error), variance.sequence_variance())
    return concat_codes(codes, n, sae.cfg.d_sae), errors


def measure_latents(codes: SparseCodes, layout: RowLayout, cfg: AnalysisConfig) -> LatentMeasures:
    top = top_token_share(codes, layout.window, layout.token, cfg.top_windows)
    return LatentMeasures(
        firing_count=firing_counts(codes).numpy(),
        top_token_id=top.top_token_id.numpy(),
        top_token_share=top.share.numpy(),
        positional_r2=positional_r2(codes, layout.position, layout.context_size, cfg.position_bins).numpy(),
        context_dependence=context_dependence(codes, layout.token, top.top_token_id, cfg.min_token_count).numpy(),
    )


def latent_samples(latents: LatentMeasures, cfg: AnalysisConfig) -> dict[str, MeanSample]:
    """Per-latent units whose means are the SAE's latent metrics (fractions are means of 0/1 flags), over
    the latents active on at least `min_activations` rows."""
    measured = latents.firing_count >= cfg.min_activations
    share = latents.top_token_share[measured]
    r2 = np.nan_to_num(latents.positional_r2[measured])  # NaN only for a latent constant on every row
    frequency = latents.firing_count[measured]
    return {
        "single_token_fraction": MeanSample((share >= cfg.single_token_threshold) * 1.0, frequency),
        "mean_top_token_share": MeanSample(share, frequency),
        "positional_fraction": MeanSample((r2 >= cfg.positional_threshold) * 1.0, frequency),
        "mean_positional_r2": MeanSample(r2, frequency),
    }


def context_samples(
    latents: Mapping[SAEKey, LatentMeasures], n_rows: Mapping[SAEKey, int], cfg: AnalysisConfig
) -> dict[SAEKey, MeanSample]:
    """Per SAE, the sample of `mean_context_dependence`: the measured latents with a context dependence,
    weighted to one firing-rate distribution per layer (see context.py)."""
    samples = {}
    for layer in {key.layer for key in latents}:
        values, bins, frequency = {}, {}, {}
        for key in (key for key in latents if key.layer == layer):
            m = latents[key]
            eligible = (m.firing_count >= cfg.min_activations) & np.isfinite(m.context_dependence)
            values[key], frequency[key] = m.context_dependence[eligible], m.firing_count[eligible]
            bins[key] = firing_rate_bin(frequency[key], n_rows[key])
        for key, (kept, weights) in standardized_weights(values, bins).items():
            samples[key] = MeanSample(values[key][kept], frequency[key][kept], weights)
    return samples


def token_samples(errors: TokenErrors) -> dict[str, RatioSample]:
    """The explained variances (see token_lookup.py) as ratios of per-sequence sums."""
    sae_error, lookup_error = errors.sae_error.numpy(), errors.lookup_error.numpy()
    sequence, variance = errors.sequence.numpy(), errors.sequence_variance.numpy()
    lookup_by_sequence = np.bincount(sequence, lookup_error, variance.size)
    return {
        "lookup_ev": RatioSample.from_rows(lookup_error, variance, sequence),
        "sae_ev": RatioSample.from_rows(sae_error, variance, sequence),
        "sae_ev_beyond_lookup": RatioSample.from_rows(sae_error, lookup_by_sequence, sequence),
    }


def summarize(key: SAEKey, latents: LatentMeasures, samples: Mapping[str, Sample], n_rows: int) -> SAEMeasurements:
    """The SAE's record: every sample's value, plus the counts behind them (`n_rows` analysed rows)."""
    values: dict[str, Any] = {name: sample.value() for name, sample in samples.items()}  # float fields, by name
    interp_counts = {
        f"n_interp_{kind}": samples[f"fuzz_auroc_{kind}"].n_units for kind in KINDS if f"fuzz_auroc_{kind}" in samples
    }
    return SAEMeasurements(
        variant=key.variant,
        layer=key.layer,
        variant_seed=key.variant_seed,
        sae_seed=key.sae_seed,
        d_sae=int(latents.firing_count.size),
        n_rows=n_rows,
        n_alive=int((latents.firing_count > 0).sum()),
        n_measured=samples["single_token_fraction"].n_units,
        n_context_eligible=samples["mean_context_dependence"].n_units,
        **interp_counts,
        **values,
    )


def analyse_sae(
    sae: SparseAutoencoder,
    heldout_chunks: Iterable[Tensor],
    layout: RowLayout,
    lookup: TokenLookup,
    cfg: AnalysisConfig,
) -> SAEAnalysis:
    """The per-latent and per-row arrays of one SAE on the held-out rows of `layout`."""
    codes, errors = encode_heldout(sae, heldout_chunks, layout, lookup)
    return SAEAnalysis(measure_latents(codes, layout, cfg), errors)
