"""The BatchTopK SAE of Bussmann et al. 2024, as SAELens and dictionary_learning train it.

In training, the k·n largest ReLU pre-activations of the whole batch of n tokens are kept (k per token on
average, more on dense tokens, fewer on simple ones); the loss is the batch's FVU plus, with a coefficient,
TopK's AuxK on dead latents. A batch's code depends on the other tokens, so at inference a token is encoded on
its own with a threshold θ: z = pre · H(pre - θ), θ a running average of the smallest kept activation of each
training batch (θ ← (1 - r)·θ + r·min, from the first batch's min as dictionary_learning starts it; r is
SAELens's `topk_threshold_lr` 0.01 in long runs, larger in short ones, `threshold_rate`). Saved as SAELens
saves it: a JumpReLU SAE with θ in every latent's `threshold`.

Training is sparse after the dense encoder product: the kept (token, latent) pairs are re-encoded and
decoded by `kernels.pairs_encode` / `pairs_decode`, whose backward passes touch only those pairs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from randsae.sae import distributed
from randsae.sae.base import LossOutput, SAEConfig, SparseAutoencoder, register
from randsae.sae.jumprelu import encode_above
from randsae.sae.kernels import CodePairs, pairs_decode, pairs_encode
from randsae.sae.topk import TopKSAE, auxk_loss, check_k

THRESHOLD_LR = 0.01
"""Weight of each batch's smallest kept activation in the running threshold in long runs (SAELens's default)."""
THRESHOLD_WINDOW = 0.1
"""The running threshold's time constant at most, as a fraction of the run's steps: SAELens's 100 steps are most of
a short run, and a threshold averaged over it lags the activations that grow meanwhile."""


SHORT_RUN, LONG_RUN = 150, 600
"""Run lengths in steps up to which a short run's encoder start holds, and from which a long run's does."""


def encoder_start(n_steps: int, short_run_start: float, long_run_start: float) -> float:
    """The encoder start of a run of `n_steps` steps: geometric in the steps between the short run's and the long
    run's. A small start turns the encoder's directions fast (Adam's steps do not shrink with the weights), which
    pays in a long run; a short one has no time to grow it to the activations' scale."""
    position = math.log(n_steps / SHORT_RUN) / math.log(LONG_RUN / SHORT_RUN)
    return short_run_start * (long_run_start / short_run_start) ** min(1.0, max(0.0, position))


def threshold_rate(n_steps: int) -> float:
    """The running threshold's rate in a run of `n_steps` steps: SAELens's 0.01, or faster in runs shorter than
    1 / (0.01 · THRESHOLD_WINDOW) = 1,000 steps, up to 1 (the last batch's minimum)."""
    return min(1.0, max(THRESHOLD_LR, 1 / (THRESHOLD_WINDOW * n_steps)))


class BatchCode(NamedTuple):
    """A training batch's code: the kept pairs and their activations [nnz] (float, > 0 up to rounding)."""

    pairs: CodePairs
    values: Tensor


@register
class BatchTopKSAE(SparseAutoencoder):
    """BatchTopK SAE: `cfg.k` active latents per token on average over a training batch."""

    architecture = "batchtopk"
    encoder_init_norm = TopKSAE.encoder_init_norm
    """TopK's start, a short run's; `set_run_length` sets the run's own (`encoder_start`). A small start needs a
    run-length `threshold_rate` (at SAELens's 0.01, a 16-step run's threshold lagged the growing activations:
    held-out EV -1.9; benchmarks/README.md, "Encoder start and decoder lr")."""
    long_run_encoder_start = 0.1
    """The start of runs of `LONG_RUN` steps or more: better than 0.3 at k 64 and up in 600-step runs and at k 128
    in the real site's 510- to 2,040-step ones, worse by 0.001-0.002 at k 16 and 32 and, once, by 0.015 (k 192,
    2,400 synthetic steps); 0.3 was better in every run of 150 steps or fewer (benchmarks/README.md, "BatchTopK's
    start and threshold rate")."""
    decoder_lr_scale = TopKSAE.decoder_lr_scale
    threshold: Tensor
    """[d_sae], every entry the running threshold (a buffer: saved, not trained)."""

    def __init__(self, cfg: SAEConfig):
        self.k = check_k(cfg)
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(cfg.d_sae))
        self.threshold_rate = THRESHOLD_LR
        """The running threshold's rate (`set_run_length` sets the run's own)."""

    def encode(self, x: Tensor) -> Tensor:
        """Inference: [n, d_in] -> dense latents [n, d_sae] above the threshold, each token on its own."""
        pre, above = encode_above(x, self.W_enc, self.b_enc, self.b_dec, self.threshold)
        return pre * above

    def batch_code(self, x: Tensor) -> BatchCode:
        """The k·n largest positive pre-activations of the batch x [n, d_in], differentiable in the weights."""
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
            top = pre.flatten().topk(self.k * x.shape[0], sorted=False)
            flat = top.indices[top.values > 0]
            del pre
        pairs = CodePairs.from_flat(flat, x.shape[0], self.cfg.d_sae)
        return BatchCode(pairs, pairs_encode(x, self.W_enc, self.b_enc, self.b_dec, pairs).relu())

    def reconstruction_loss(self, x: Tensor, code: BatchCode, total_variance: Tensor) -> tuple[Tensor, Tensor]:
        """(the loss to minimize, the full reconstruction's residual [n, d_in]); BatchTopK: its FVU."""
        residual = x - pairs_decode(code.values, code.pairs, self.W_dec) - self.b_dec
        return residual.pow(2).sum() / total_variance, residual

    def loss(self, x: Tensor, dead_mask: Tensor | None = None, total_variance: Tensor | None = None) -> LossOutput:
        """Reconstruction loss of the batch x [n, d_in]; with `dead_mask` [d_sae], also AuxK on those latents.
        Moves the running threshold."""
        code = self.batch_code(x)
        if total_variance is None:
            total_variance = (x - x.mean(dim=0)).pow(2).sum()
        loss, residual = self.reconstruction_loss(x, code, total_variance)
        self.update_threshold(code.values.detach())
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[code.pairs.latents[code.values > 0]] = True
        aux = None
        if dead_mask is not None and bool(dead_mask.any()):
            aux = auxk_loss(self, x, residual.detach(), dead_mask) / total_variance
        fvu = residual.detach().pow(2).sum() / total_variance
        return LossOutput(loss=loss, fvu=fvu, fired=fired, aux_loss=aux)

    def set_run_length(self, n_steps: int) -> None:
        self.set_start(encoder_start(n_steps, type(self).encoder_init_norm, self.long_run_encoder_start), None)
        self.threshold_rate = threshold_rate(n_steps)

    @torch.no_grad()
    def update_threshold(self, values: Tensor) -> None:
        """θ ← (1 - r)·θ + r·(smallest positive kept activation), r the `threshold_rate`; the first batch's
        smallest itself while θ is still 0 (dictionary_learning's start: from 0, a short run would end far below
        the batches' minimum and encode many more latents than it trained with); data-parallel, the ranks' mean
        of it."""
        positive = values[values > 0]
        smallest = positive.min() if positive.numel() else self.threshold[0]
        smallest = distributed.all_mean_(smallest.clone())
        rate = 1.0 if bool((self.threshold == 0).all()) else self.threshold_rate
        self.threshold.mul_(1 - rate).add_(rate * smallest)
