"""The gated SAE of Rajamanoharan et al. 2024, with SAELens's parameter names.

One encoder matrix serves two paths: a gate H(π + b_gate) decides which latents are active and a magnitude
ReLU(π·exp(r_mag) + b_mag) sets their values, with π = (x - b_dec) @ W_enc; z = gate · magnitude. The L1
penalty acts on ReLU(π + b_gate) only, so it does not shrink the magnitudes (the bias of a ReLU-L1 SAE), and an
auxiliary loss makes the gate's own ReLU reconstruct x through the decoder, frozen as in the paper, so that
the gate path gets a reconstruction gradient. There is no `b_enc` (SAELens's gated format has none).

Loss in ReLU-L1's units (`relu.py`): mean squared error + λ·mean ReLU(π + b_gate) + the auxiliary mean
squared error, means over every element; decoder rows unit-norm, so SAELens's ‖W_dec‖ factor is 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from randsae.errors import UserError
from randsae.sae.base import LossOutput, SAEConfig, SparseAutoencoder, register
from randsae.sae.jumprelu import encode_above


@register
class GatedSAE(SparseAutoencoder):
    """Gated SAE; `cfg.l1_coefficient` is λ."""

    architecture = "gated"
    mean_over_inputs = True

    def __init__(self, cfg: SAEConfig):
        if cfg.l1_coefficient is None or not cfg.l1_coefficient >= 0:
            raise UserError(
                f"gated SAE needs a non-negative l1_coefficient, got {cfg.l1_coefficient!r}",
                "Set sae.l1_coefficient (the λ of the gate's L1 penalty)",
            )
        super().__init__(cfg)
        del self.b_enc  # the gate and the magnitude have their own biases
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(gate pre-activations π + b_gate, magnitudes ReLU(π·exp(r_mag) + b_mag)), each [n, d_sae]."""
        pi = (x - self.b_dec) @ self.W_enc
        return pi + self.b_gate, torch.relu(pi * self.r_mag.exp() + self.b_mag)

    def encode(self, x: Tensor) -> Tensor:
        """Inference, the gate decided the same whatever the batch (`encode_above`)."""
        gate, above = encode_above(x, self.W_enc, self.b_gate, self.b_dec, self.b_gate.new_zeros(()))
        pi = gate - self.b_gate
        return above * torch.relu(pi * self.r_mag.exp() + self.b_mag)

    def loss(self, x: Tensor, dead_mask: Tensor | None = None, total_variance: Tensor | None = None) -> LossOutput:
        """MSE + λ·mean ReLU(gate) + the gate path's MSE through the frozen decoder; `dead_mask` unused."""
        gate, magnitude = self.gate_and_magnitude(x)
        z = (gate > 0) * magnitude
        error = self.decode(z) - x
        gate_code = gate.relu()
        via_gate = gate_code @ self.W_dec.detach() + self.b_dec.detach()
        assert self.cfg.l1_coefficient is not None
        loss = error.pow(2).mean() + self.cfg.l1_coefficient * gate_code.mean() + (via_gate - x).pow(2).mean()
        if total_variance is None:
            total_variance = (x - x.mean(dim=0)).pow(2).sum()
        fvu = error.pow(2).sum() / total_variance
        return LossOutput(loss=loss, fvu=fvu.detach(), fired=(z > 0).any(dim=0))
