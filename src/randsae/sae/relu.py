"""The ReLU-L1 SAE (Sharkey et al. 2022; Bricken et al. 2023): linear encoder with bias, ReLU, linear decoder.

Sparsity comes from an L1 penalty instead of a hard TopK: loss = MSE + λ·mean|z|, with λ the config's
`l1_coefficient` and both means taken over every element of the batch (as in the paper's toy sweep, so a λ
value means the same thing as there).

`b_dec` follows the SAELens convention: subtracted from the input before encoding, added back after
decoding. The paper's toy autoencoder has no decoder bias; the toy sweep reproduces that by leaving
`b_dec` at zero and out of the optimizer. A trainer on model activations may train it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from randsae.errors import UserError
from randsae.sae.base import LossOutput, SAEConfig, SparseAutoencoder, register


@register
class ReluSAE(SparseAutoencoder):
    """encode: relu((x - b_dec) @ W_enc + b_enc); decode: z @ W_dec + b_dec; decoder rows kept unit-norm."""

    architecture = "relu_l1"
    encoder_init_norm = 1.0
    mean_over_inputs = True
    l1_coefficient: Tensor
    """λ, a 0-d buffer (see __init__)."""

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__(cfg)
        if cfg.l1_coefficient is None or not cfg.l1_coefficient >= 0:
            raise UserError(
                f"relu_l1 SAE needs a non-negative l1_coefficient, got {cfg.l1_coefficient!r}",
                "Set l1_coefficient (the λ of the L1 penalty) in the SAE config",
            )
        # A buffer rather than a float, so a batched trainer can give every stacked SAE its own λ
        # (torch.func.functional_call swaps buffers like parameters). Not persistent: the SAELens file
        # keeps its four tensors and cfg.json holds λ.
        self.register_buffer("l1_coefficient", torch.tensor(float(cfg.l1_coefficient)), persistent=False)
        with torch.no_grad():
            # Unit-norm random decoder rows and the encoder as their transpose: every latent starts as a
            # matched filter for its own direction, which keeps few latents dead at the start.
            self.W_dec.copy_(torch.randn(cfg.d_sae, cfg.d_in, generator=generator))
            self.normalize_decoder()
            self.W_enc.copy_(self.W_dec.T * self.encoder_init_norm)

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def loss(self, x: Tensor, dead_mask: Tensor | None = None, total_variance: Tensor | None = None) -> LossOutput:
        """MSE + λ·mean|z| on a batch [n, d_in]; `dead_mask` is unused (no auxiliary loss here)."""
        z = self.encode(x)
        error = self.decode(z) - x
        mse = error.pow(2).mean()
        # z >= 0 after the ReLU, so mean|z| is the plain mean.
        loss = mse + self.l1_coefficient * z.mean()
        if total_variance is None:
            total_variance = (x - x.mean(dim=0)).pow(2).sum()
        fvu = error.pow(2).sum() / total_variance
        return LossOutput(loss=loss, fvu=fvu.detach(), fired=(z > 0).any(dim=0))
