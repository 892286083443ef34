"""The JumpReLU SAE of Rajamanoharan et al. 2024 (Gemma Scope), as SAELens trains it.

z = pre · H(pre - θ) with pre = (x - b_dec) @ W_enc + b_enc and a learned threshold θ per latent. The step H
has no useful gradient, so θ learns through straight-through estimators with a rectangle kernel of width
`bandwidth`: d/dθ of pre·H(pre - θ) is taken as -(θ/ε)·rect((pre - θ)/ε), and d/dθ of H(pre - θ) as
-(1/ε)·rect((pre - θ)/ε); the pre-activations get the plain gradient H(pre - θ) (DeepMind's variant, and
SAELens's default `jumprelu_ste_to_input = False`). The loss is FVU + λ·(mean L0 per token).

Differences from SAELens, both deliberate: unit-norm decoder rows (as every architecture here; SAELens scales
the penalty by the rows' norms instead, the same thing at norm 1), and the loss in FVU units, so λ does not
depend on the activations' scale; ε is given for activations of mean norm sqrt(d_in), SAELens's convention,
and rescaled to the data's norm when training starts. The code is dense here: early in training about half
the latents are above their small initial thresholds, so a sparse decoder would not pay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from randsae.errors import UserError
from randsae.sae.base import LossOutput, SAEConfig, SparseAutoencoder, register

INIT_THRESHOLD = 0.01
"""SAELens's `jumprelu_init_threshold`, in the same normalized units as the bandwidth."""


def jumprelu(pre: Tensor, threshold: Tensor) -> Tensor:
    """pre · H(pre - θ): [n, m], [m] -> [n, m]."""
    return pre * (pre > threshold)


def encode_above(x: Tensor, W: Tensor, bias: Tensor, b_dec: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """(pre = (x - b_dec) @ W + bias [n, m], pre > threshold [n, m]), the comparison decided the same whatever
    batch x [n, d] is encoded in: the inference of every thresholded architecture (JumpReLU, the BatchTopKs, the
    gate of a gated SAE).

    A float32 product's rounding depends on the batch's shape, and at a threshold a rounding error flips a whole
    activation, so encoding a row alone and inside a batch would disagree (the latent cache checks they do
    not). Entries within a safe bound of the float32 error (1e-4·‖x - b_dec‖·‖W[:, j]‖) of θ are decided on a
    float64 recomputation of their dot product, which does not depend on the batch."""
    centred = x - b_dec
    pre = torch.addmm(bias, centred, W)
    margin = 1e-4 * centred.norm(dim=1, keepdim=True) * W.norm(dim=0) + 1e-6 * bias.abs()
    above = pre > threshold
    rows, cols = ((pre - threshold).abs() <= margin).nonzero(as_tuple=True)
    if rows.numel():
        exact = (centred[rows].double() * W[:, cols].T.double()).sum(dim=1) + bias[cols].double()
        above[rows, cols] = exact > threshold.double().expand(pre.shape[1])[cols]
    return pre, above


def rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return jumprelu(pre, threshold)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        window = rectangle((pre - threshold) / ctx.bandwidth)
        grad_threshold = -(threshold / ctx.bandwidth * window * grad_out).sum(dim=0)
        return (pre > threshold) * grad_out, grad_threshold, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        window = rectangle((pre - threshold) / ctx.bandwidth)
        return None, -(window * grad_out).sum(dim=0) / ctx.bandwidth, None


def jumprelu_ste(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """`jumprelu` with the straight-through gradient for θ [m]; pre [n, m] -> [n, m]."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step_ste(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """H(pre - θ) as a float, with the straight-through gradient for θ only (the L0 penalty's)."""
    return _Step.apply(pre, threshold, bandwidth)


@register
class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU SAE; `cfg.l0_coefficient` prices each active latent, `cfg.jumprelu_bandwidth` is ε."""

    architecture = "jumprelu"

    def __init__(self, cfg: SAEConfig):
        """The L0 price and the bandwidth are needed to train (checked when training starts), not to encode: a
        JumpReLU SAE read from SAELens has neither."""
        if cfg.l0_coefficient is not None and not cfg.l0_coefficient >= 0:
            raise UserError(
                f"jumprelu SAE needs a non-negative l0_coefficient, got {cfg.l0_coefficient!r}",
                "Set sae.l0_coefficient (the price of one active latent per token, in FVU)",
            )
        if cfg.jumprelu_bandwidth is not None and not cfg.jumprelu_bandwidth > 0:
            raise UserError(
                f"jumprelu SAE needs a positive jumprelu_bandwidth, got {cfg.jumprelu_bandwidth!r}",
                "Set sae.jumprelu_bandwidth (SAELens uses 0.05)",
            )
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), INIT_THRESHOLD))
        self.bandwidth = cfg.jumprelu_bandwidth or 0.0
        """ε in the data's units (`init_from_data` rescales it)."""

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Training starts: b_dec at the mean; ε and the initial θ scaled from mean norm sqrt(d_in) to the
        data's."""
        if self.cfg.l0_coefficient is None or self.cfg.jumprelu_bandwidth is None:
            raise UserError(
                "a jumprelu SAE trains with an l0_coefficient and a jumprelu_bandwidth, and this one has "
                f"{self.cfg.l0_coefficient!r} and {self.cfg.jumprelu_bandwidth!r}",
                "Set sae.l0_coefficient and sae.jumprelu_bandwidth",
            )
        super().init_from_data(x)
        scale = x.norm(dim=1).mean().item() / math.sqrt(self.cfg.d_in)
        self.bandwidth = self.cfg.jumprelu_bandwidth * scale
        self.threshold.fill_(INIT_THRESHOLD * scale)

    def pre_activations(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Inference as SAELens's: ReLU(pre)·H(pre - θ), so that a θ the last step left just below 0 lets no
        negative activation through."""
        pre, above = encode_above(x, self.W_enc, self.b_enc, self.b_dec, self.threshold)
        return pre.relu() * above

    def loss(self, x: Tensor, dead_mask: Tensor | None = None, total_variance: Tensor | None = None) -> LossOutput:
        """FVU + λ·mean L0 on a batch [n, d_in]; `dead_mask` is unused (no auxiliary loss)."""
        with torch.no_grad():
            # θ < 0 would let negative pre-activations through; projected, not clamped in the graph (SAELens).
            self.threshold.clamp_(min=0.0)
        pre = self.pre_activations(x)
        z = jumprelu_ste(pre, self.threshold, self.bandwidth)
        residual = x - self.decode(z)
        if total_variance is None:
            total_variance = (x - x.mean(dim=0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_variance
        l0 = step_ste(pre, self.threshold, self.bandwidth).sum(dim=1).mean()
        assert self.cfg.l0_coefficient is not None
        return LossOutput(loss=fvu + self.cfg.l0_coefficient * l0, fvu=fvu.detach(), fired=(z > 0).any(dim=0))
