"""One rank of a small data-parallel streamed training, run by torchrun from tests/test_sae_distributed.py.

`python -m tests.ddp_worker OUT [KILL_AT_FORWARD]`: rank 0 saves the SAEs' weights to OUT; with
KILL_AT_FORWARD, the last rank dies at that forward (its checkpoint is OUT.ckpt).
"""

from __future__ import annotations

import os
import sys

import torch
from torch import Tensor

from randsae.sae import distributed
from randsae.sae.base import SAEConfig
from randsae.sae.streaming import ActivationStream, train_streaming
from randsae.sae.trainer import TrainConfig

N_WINDOWS, CONTEXT, D = 20, 9, 8
CFG = TrainConfig(
    batch_size=32,
    total_tokens=2 * N_WINDOWS * (CONTEXT - 1),
    buffer_tokens=64,
    warmup_steps=2,
    context_size=CONTEXT,
    auxk_coefficient=1 / 32,
    dead_tokens_threshold=64,
    checkpoint_every_s=0.0,
)
SAE_CFGS = [SAEConfig("topk", D, 32, k=2), SAEConfig("relu_l1", D, 16, l1_coefficient=1e-3)]


def forward(first: int, ids: Tensor) -> dict[int, Tensor]:
    """Two layers of rows that depend only on the window's index."""
    rows = torch.stack(
        [torch.randn(CONTEXT, D, generator=torch.Generator().manual_seed(first + i)) for i in range(ids.shape[0])]
    )
    return {0: rows, 1: rows.tanh() + 0.1 * rows.roll(1, dims=-1)}


def stream(rank: int = 0, world_size: int = 1) -> ActivationStream:
    ids = torch.zeros(N_WINDOWS, CONTEXT, dtype=torch.long)
    return ActivationStream(forward, ids, (0, 1), CFG, 3, seed=0, rank=rank, world_size=world_size)


def main(out: str, kill_at: int | None) -> None:
    distributed.init_from_env("cpu")
    mine = stream(distributed.rank(), distributed.world_size())
    if kill_at is not None and distributed.rank() == distributed.world_size() - 1:
        read, calls = mine._read_forward, [0]

        def dying() -> Tensor:
            calls[0] += 1
            if calls[0] == kill_at:
                os._exit(3)
            return read()

        mine._read_forward = dying  # type: ignore[method-assign]
    results = train_streaming(mine, SAE_CFGS, seed=0, progress=False, checkpoint=out + ".ckpt")
    if distributed.is_main():
        torch.save([result.sae.state_dict() for result in results], out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
