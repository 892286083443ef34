"""The TopK SAE of Gao et al. 2024, as Heap et al. train it.

z = TopK(ReLU((x - b_dec) @ W_enc + b_enc)) keeps the k largest latents per token; x̂ = z @ W_dec + b_dec
with unit-norm decoder rows. The loss is the batch's fraction of variance unexplained (FVU). Training and
`forward` go through the sparse kernels (`kernels.py`); `encode` returns the dense latents for metrics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from randsae.errors import UserError
from randsae.sae.base import LossOutput, SAEConfig, SparseAutoencoder, SparseLatents, register
from randsae.sae.kernels import TopKOutput, sparse_decode, topk_encode


def check_k(cfg: SAEConfig) -> int:
    """`cfg.k`, which every TopK-style architecture needs between 1 and d_sae - 1."""
    if not cfg.k or not 0 < cfg.k < cfg.d_sae:
        raise UserError(
            f"{cfg.architecture} SAE needs 0 < k < d_sae, got k={cfg.k} with d_sae={cfg.d_sae}",
            "Set sae.k to a positive number of active latents below d_sae (the paper uses 32)",
        )
    return cfg.k


@register
class TopKSAE(SparseAutoencoder):
    """TopK SAE; `cfg.k` latents are active per token."""

    architecture = "topk"
    encoder_init_norm = 0.3
    decoder_lr_scale = 2.0
    """A smaller encoder start and a faster decoder than the reference trainers': on the default run's
    activations held-out EV 0.6998 -> 0.7260 (k 32), and ahead of SAELens's trainer at k 32 and 128
    (benchmarks/README.md, "Encoder start and decoder lr")."""
    selection_dtype: torch.dtype | None = None
    """Dtype of the dense product that picks the top k (values stay exact); the trainer sets it from
    `TrainConfig.topk_selection_dtype` while training. None: the weights' own dtype."""

    def __init__(self, cfg: SAEConfig):
        self.k = check_k(cfg)
        super().__init__(cfg)

    def encode_topk(self, x: Tensor) -> TopKOutput:
        """[n, d_in] -> the k active latents per token: TopKOutput(values [n, k], indices [n, k])."""
        return topk_encode(x, self.W_enc, self.b_enc, self.b_dec, self.k, self.selection_dtype)

    def encode(self, x: Tensor) -> Tensor:
        """[n, d_in] -> dense latents [n, d_sae], zero outside each token's top k."""
        top = self.encode_topk(x)
        return x.new_zeros(x.shape[0], self.cfg.d_sae).scatter(1, top.indices, top.values)

    def decode_topk(self, top: TopKOutput) -> Tensor:
        """Sparse decode of `encode_topk`'s output -> reconstruction [n, d_in]."""
        return sparse_decode(top.values, top.indices, self.W_dec) + self.b_dec

    def encode_sparse(self, x: Tensor) -> tuple[SparseLatents, Tensor]:
        """`encode_topk`'s latents less the zeros (a token with fewer than k positive pre-activations), and
        the sparse decode."""
        top = self.encode_topk(x)
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(top.indices)
        active = top.values != 0
        return SparseLatents(rows[active], top.indices[active], top.values[active]), self.decode_topk(top)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_topk(self.encode_topk(x))

    def loss(self, x: Tensor, dead_mask: Tensor | None = None, total_variance: Tensor | None = None) -> LossOutput:
        """FVU of the batch x [n, d_in]; with `dead_mask` [d_sae], also the AuxK loss on those latents."""
        top = self.encode_topk(x)
        residual = x - self.decode_topk(top)
        if total_variance is None:
            total_variance = (x - x.mean(dim=0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_variance
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[top.indices[top.values > 0]] = True
        aux = None
        if dead_mask is not None and bool(dead_mask.any()):
            aux = auxk_loss(self, x, residual.detach(), dead_mask) / total_variance
        return LossOutput(loss=fvu, fvu=fvu.detach(), fired=fired, aux_loss=aux)


def auxk_loss(sae: SparseAutoencoder, x: Tensor, residual: Tensor, dead_mask: Tensor) -> Tensor:
    """Squared error of the top-k_aux dead latents predicting the main reconstruction's residual.

    Gao et al. 2024 (appendix B.1): gives dead latents a gradient; k_aux = d_in // 2. Every TopK-style
    architecture (topk, batchtopk, matryoshka_batchtopk) uses it.
    x, residual [n, d_in]; dead_mask bool [d_sae] -> scalar (sum over the batch, not normalized).
    """
    dead = dead_mask.nonzero().squeeze(1)
    k_aux = min(sae.cfg.d_in // 2, dead.numel())
    top = topk_encode(x, sae.W_enc[:, dead], sae.b_enc[dead], sae.b_dec, k_aux)
    predicted = sparse_decode(top.values, dead[top.indices], sae.W_dec)
    return (predicted - residual).pow(2).sum()
