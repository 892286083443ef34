"""The Matryoshka BatchTopK SAE of Bussmann et al. 2025 (and Nabeshima 2024), as SAELens trains it.

A BatchTopK SAE whose latents are split into nested prefixes of widths w_1 < w_2 < ... < w_L = d_sae: each
prefix must reconstruct the input on its own, so the loss is the sum of the prefixes' FVUs (the last one
being the whole SAE's). Early latents learn general, frequent directions and later ones refine them, which
counters feature absorption. AuxK, the running threshold, inference and the saved format are BatchTopK's.
"""

from __future__ import annotations

from torch import Tensor

from randsae.errors import UserError
from randsae.sae.base import SAEConfig, register
from randsae.sae.batchtopk import BatchCode, BatchTopKSAE
from randsae.sae.kernels import pairs_decode


@register
class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka BatchTopK SAE; `cfg.matryoshka_widths` are the prefix widths."""

    architecture = "matryoshka_batchtopk"
    long_run_encoder_start = BatchTopKSAE.encoder_init_norm
    """TopK's 0.3 at every length: on the 600-step benchmark budget BatchTopK's 0.1 cost it 0.001 to 0.004 of
    held-out EV at every k from 16 to 192 (benchmarks/README.md, "BatchTopK's start and threshold rate")."""

    def __init__(self, cfg: SAEConfig):
        widths = cfg.matryoshka_widths or ()
        increasing = all(a < b for a, b in zip((0, *widths), widths, strict=False))
        if not widths or not increasing or widths[-1] != cfg.d_sae:
            raise UserError(
                f"matryoshka SAE needs strictly increasing prefix widths ending at d_sae={cfg.d_sae}, got {widths}",
                "Set sae.matryoshka_groups to group sizes that add up to the expansion",
            )
        super().__init__(cfg)
        self.widths: tuple[int, ...] = widths

    def reconstruction_loss(self, x: Tensor, code: BatchCode, total_variance: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ over prefixes of each prefix's FVU, the whole SAE's residual [n, d_in]); each group's pairs are
        decoded once and added to the previous prefix's reconstruction."""
        reconstruction = self.b_dec.expand_as(x)
        loss = x.new_zeros(())
        start = 0
        for width in self.widths:
            in_group = (code.pairs.latents >= start) & (code.pairs.latents < width)
            group = code.pairs.select(in_group)
            reconstruction = reconstruction + pairs_decode(code.values[in_group], group, self.W_dec)
            loss = loss + (x - reconstruction).pow(2).sum() / total_variance
            start = width
        return loss, x - reconstruction
