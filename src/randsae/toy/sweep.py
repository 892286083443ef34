"""Train a whole λ sweep of ReLU-L1 SAEs at once.

The toy experiment trains hundreds of small SAEs that differ only in λ. Training them one by one leaves
two cores mostly idle on small matrix products; stacking them turns every product into one batched
matmul. The SAEs stay `ReluSAE` modules: their parameters are stacked with `torch.func.stack_module_state`
and the SAE's own `loss` and `normalize_decoder` run under `vmap`, so the architecture lives only in
`randsae.sae.relu`. Adam is elementwise, so one Adam over the stacked tensors is one Adam per SAE.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from randsae.sae.base import SAEConfig
from randsae.sae.relu import ReluSAE
from randsae.seeds import derived_seed

TRAINED = ("W_enc", "b_enc", "W_dec")
"""The paper's toy autoencoder has no decoder bias: b_dec stays at zero, outside the optimizer."""


class _Call(nn.Module):
    """Lets `functional_call` (which only ever calls `forward`) run `method(sae, *args)` instead."""

    def __init__(self, sae: ReluSAE, method: Callable[..., Any]):
        super().__init__()
        self.sae = sae
        self.method = method

    def forward(self, *args: Tensor):
        return self.method(self.sae, *args)


def _training_loss(sae: ReluSAE, x: Tensor) -> Tensor:
    return sae.loss(x).loss


def _normalized_decoder(sae: ReluSAE) -> Tensor:
    """`normalize_decoder` returns nothing, and vmap needs an output."""
    sae.normalize_decoder()
    return sae.W_dec


def train_relu_sweep(
    x_train: Tensor,
    d_sae: int,
    l1_coefficients: Sequence[float],
    seed: int,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    metadata: dict | None = None,
    progress: bool = False,
) -> list[ReluSAE]:
    """One `ReluSAE` per λ, all from the same seeded initialization, trained on the same batches.

    x_train [n, d_in] (on the device to train on); returns the trained SAEs in λ order, on that device.
    """
    device = x_train.device
    saes = []
    for l1 in l1_coefficients:
        cfg = SAEConfig(
            "relu_l1",
            d_in=x_train.shape[1],
            d_sae=d_sae,
            l1_coefficient=float(l1),
            metadata={**(metadata or {}), "seed": seed},
        )
        init = torch.Generator().manual_seed(derived_seed(seed, "sae_init"))
        saes.append(ReluSAE(cfg, generator=init).to(device))
    params, buffers = stack_module_state(saes)
    trained = {name: params[name] for name in TRAINED}
    frozen = {name: value.detach() for name, value in params.items() if name not in TRAINED}
    template = copy.deepcopy(saes[0]).to("meta")

    def call(method: Callable[..., Any]):
        module = _Call(template, method)

        def run(trained_params, frozen_params, stacked_buffers, *args):
            state = {
                f"sae.{name}": value for name, value in {**trained_params, **frozen_params, **stacked_buffers}.items()
            }
            return functional_call(module, state, args)

        return run

    batched_loss = vmap(call(_training_loss), in_dims=(0, 0, 0, None))
    batched_normalize = vmap(call(_normalized_decoder), in_dims=(0, 0, 0))
    # The fused kernel runs Adam about 5x faster on CPU than the default multi-tensor one.
    optimizer = torch.optim.Adam(trained.values(), lr=learning_rate, fused=True)
    order = torch.Generator().manual_seed(derived_seed(seed, "batch_order"))
    steps_per_epoch = x_train.shape[0] // batch_size
    bar = tqdm(
        total=epochs * steps_per_epoch,
        desc=f"{len(saes)} SAEs × {d_sae} latents",
        unit="step",
        disable=not progress,
        leave=False,
    )
    for _ in range(epochs):
        permutation = torch.randperm(x_train.shape[0], generator=order).to(device)
        for step in range(steps_per_epoch):
            batch = x_train[permutation[step * batch_size : (step + 1) * batch_size]]
            loss = batched_loss(trained, frozen, buffers, batch).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                batched_normalize(trained, frozen, buffers)
            bar.update()
    bar.close()
    with torch.no_grad():
        for index, sae in enumerate(saes):
            for name, value in trained.items():
                getattr(sae, name).copy_(value[index])
    return saes
