"""Downstream-loss metrics: how much of the model's next-token loss survives splicing in the SAE.

CE-loss score = (CE_zero - CE_sae) / (CE_zero - CE_clean), where the hooked residual stream is replaced
by zeros or by the SAE's reconstruction; KL score = (KL_zero - KL_sae) / KL_zero with KL(clean ‖ patched).
Position 0 (BOS) is never replaced: the SAE was not trained on it. For a random variant these scores
measure a model whose predictions mean nothing, so they are reported with `meaningful = False`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from randsae.metrics.quality import ratio
from randsae.models.hookpoints import replace_residual

K = TypeVar("K", bound=Hashable)


@dataclasses.dataclass(frozen=True)
class DownstreamMetrics:
    ce_clean: float
    ce_zero: float
    ce_sae: float
    kl_zero: float
    kl_sae: float
    ce_loss_score: float
    kl_score: float
    n_predictions: int
    """Next-token predictions the CE and KL means are taken over (windows × (context - 1))."""


def ce_loss_score(ce_clean: float, ce_zero: float, ce_sae: float) -> float:
    return ratio(ce_zero - ce_sae, ce_zero - ce_clean)


def kl_score(kl_zero: float, kl_sae: float) -> float:
    return ratio(kl_zero - kl_sae, kl_zero)


def _next_token_ce(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Summed cross-entropy of predicting token t+1 from position t, over the batch."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="sum")


def _kl(clean_logits: Tensor, patched_logits: Tensor) -> Tensor:
    """Summed KL(clean ‖ patched) over the predicting positions."""
    clean = F.log_softmax(clean_logits[:, :-1].float(), dim=-1)
    patched = F.log_softmax(patched_logits[:, :-1].float(), dim=-1)
    return F.kl_div(patched, clean, log_target=True, reduction="sum")


def _keep_bos(replacement: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def replace(resid: Tensor) -> Tensor:
        patched = replacement(resid)
        return torch.cat([resid[:, :1], patched[:, 1:].to(resid.dtype)], dim=1)

    return replace


def _through_sae(reconstruct: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The residual [batch, seq, d] replaced by its reconstruction (in float32, cast back by `_keep_bos`)."""
    return lambda resid: reconstruct(resid.flatten(0, 1).float()).view_as(resid)


@torch.no_grad()
def downstream_metrics(
    model: nn.Module,
    splices: dict[K, tuple[nn.Module, Callable[[Tensor], Tensor]]],
    input_ids: Tensor,
    batch_size: int = 4,
    before_forward: Callable[[int], None] | None = None,
) -> dict[K, DownstreamMetrics]:
    """Per splice: clean, zero-ablated and SAE-spliced forwards of `input_ids` [n, C].

    `splices` maps a key (a layer, an SAE) to (its block, a function from residuals [n, d] to the SAE
    reconstruction). A batch's clean forward is shared by every splice, its zero-ablated forward by the
    splices of one block (several SAEs of a layer). `before_forward(batch_index)` runs before each forward
    (the control variant reseeds its noise there, so all forwards of a batch see the same noise).
    """
    device = next(model.parameters()).device
    sums = {key: dict.fromkeys(("ce_clean", "ce_zero", "ce_sae", "kl_zero", "kl_sae"), 0.0) for key in splices}
    n_predictions = 0

    def forward(batch: Tensor, index: int) -> Tensor:
        if before_forward is not None:
            before_forward(index)
        return model(input_ids=batch, use_cache=False).logits

    for index, start in enumerate(range(0, input_ids.shape[0], batch_size)):
        batch = input_ids[start : start + batch_size].to(device=device, dtype=torch.long)
        clean = forward(batch, index)
        ce_clean = _next_token_ce(clean, batch).item()
        zeroed: dict[int, tuple[float, float]] = {}  # id(block) -> (ce, kl) with its output zeroed
        for key, (block, reconstruct) in splices.items():
            sums[key]["ce_clean"] += ce_clean
            if id(block) not in zeroed:
                with replace_residual(block, _keep_bos(torch.zeros_like)):
                    logits = forward(batch, index)
                zeroed[id(block)] = (_next_token_ce(logits, batch).item(), _kl(clean, logits).item())
            with replace_residual(block, _keep_bos(_through_sae(reconstruct))):
                logits = forward(batch, index)
            ce_zero, kl_zero = zeroed[id(block)]
            sums[key]["ce_zero"] += ce_zero
            sums[key]["kl_zero"] += kl_zero
            sums[key]["ce_sae"] += _next_token_ce(logits, batch).item()
            sums[key]["kl_sae"] += _kl(clean, logits).item()
        n_predictions += batch.shape[0] * (batch.shape[1] - 1)
    results = {}
    for key, totals in sums.items():
        mean = {name: value / n_predictions for name, value in totals.items()}
        results[key] = DownstreamMetrics(
            **mean,
            ce_loss_score=ce_loss_score(mean["ce_clean"], mean["ce_zero"], mean["ce_sae"]),
            kl_score=kl_score(mean["kl_zero"], mean["kl_sae"]),
            n_predictions=n_predictions,
        )
    return results
