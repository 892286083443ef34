"""Settings of the analysis stage: the thresholds that classify latents and the statistics' sample sizes."""

from __future__ import annotations

import dataclasses

from randsae.toml_config import invalid


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """What separates trained from random: thresholds, sample sizes and the seed-stability opt-in."""

    single_token_threshold: float = 0.9
    """A latent is single-token when its top token carries at least this share of its activation mass
    in its top windows."""
    min_activations: int = 10
    """Latent metrics cover the latents active on at least this many analysed rows (a latent seen once
    is trivially single-token)."""
    top_windows: int = 20
    """How many of a latent's highest-activating windows the single-token share looks at."""
    window_tokens: int = 32
    """Length of a window: cache rows are cut into pieces of this many tokens (the paper's 32)."""
    positional_threshold: float = 0.1
    """A latent is positional when position explains at least this share of its activation variance
    (chance-adjusted R^2). SAE latents are sparse, so even clearly positional ones rarely pass 0.3: on
    SmolLM2's layer 10, latents putting ~70% of their mass on the first 32 of 256 positions score ~0.27."""
    position_bins: int = 256
    """Equal-width bins over positions 1..context-1; every position is its own bin when there are fewer
    (a latent tied to one position, e.g. the first after BOS, needs that resolution)."""
    min_token_count: int = 20
    """Context dependence only uses tokens seen at least this often in the held-out rows, and only
    latents whose top token is one of them (a token seen once has no within-token variance)."""
    max_heldout_tokens: int = 262_144
    """Analyse at most this many held-out rows (whole cache rows, taken from the start)."""
    max_lookup_tokens: int = 4_194_304
    """Fit the token lookup on at most this many train rows (whole cache rows, from the start)."""
    bootstrap_samples: int = 1000
    """Resamples for the 95% intervals of the separation table."""
    seed: int = 0
    """Seed of the bootstrap."""
    seed_stability: bool = False
    """Train a second SAE per variant x layer with another seed and match latents across seeds
    (doubles SAE training time, so it is off on the default run)."""
    stability_seed: int = 1
    """Seed of the second SAE."""
    match_threshold: float = 0.7
    """Decoder-row cosine at or above which a Hungarian-matched pair of latents counts as the same latent."""
    chunk_rows: int = 8192
    """Activation rows encoded at a time (bounds memory)."""

    def __post_init__(self) -> None:
        for name in ("single_token_threshold", "positional_threshold", "match_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise invalid(f"analysis.{name}", value, "a number between 0 and 1")
        for name in (
            "min_activations",
            "top_windows",
            "window_tokens",
            "position_bins",
            "min_token_count",
            "max_heldout_tokens",
            "max_lookup_tokens",
            "bootstrap_samples",
            "chunk_rows",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise invalid(f"analysis.{name}", value, "an integer of at least 1")
