"""Data-parallel SAE training under torchrun: every rank trains the same SAEs on its own rows.

A step's global batch is the ranks' local batches in rank order. The FVU's normalizing variance is
reduced over ranks and gradients are averaged, so the averaged gradient is the global batch's; firing
is OR-ed over ranks. Every rank therefore holds the same SAEs and takes the same decisions (dead latents,
checkpoints); rank 0 alone writes. Outside torchrun (or with one process) every function is a no-op.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

TIMEOUT_S = float(os.environ.get("RANDSAE_DIST_TIMEOUT_S", "1800"))
"""How long a rank waits for the others in one collective before it stops with an error (a dead rank)."""


def init_from_env(device: str | torch.device) -> None:
    """Join the process group torchrun's environment describes (WORLD_SIZE > 1): nccl on CUDA, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or dist.is_initialized():
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=TIMEOUT_S))


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, a CUDA device given without an index is this process's own GPU (LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    """Wait until every rank is here (after rank 0 alone has written what the others read)."""
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group once every rank is done: a rank that exits with the group still open can
    abort in gloo's teardown while a peer is closing."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def all_mean_(tensor: Tensor) -> Tensor:
    """Average `tensor` over ranks, in place."""
    if world_size() > 1:
        dist.all_reduce(tensor)
        tensor.div_(world_size())
    return tensor


def any_rank(mask: Tensor) -> Tensor:
    """Bool `mask` true where it is true on any rank."""
    if world_size() < 2:
        return mask
    counts = mask.to(torch.int32)
    dist.all_reduce(counts)
    return counts > 0


def total_variance(x: Tensor) -> Tensor | None:
    """The global batch's summed squared distance to its mean, as this rank's share (divided by the world
    size): normalizing a rank's squared error by it makes the average over ranks the global batch's FVU.
    None with one process (the batch is global: the SAE measures it)."""
    if world_size() < 2:
        return None
    with torch.no_grad():
        mean = all_mean_(x.mean(dim=0))  # local batches are equal in size
        return all_mean_((x - mean).pow(2).sum())


def average_gradients(module: nn.Module) -> None:
    """Replace each parameter's gradient by its average over ranks, in one all-reduce."""
    if world_size() < 2:
        return
    params = list(module.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_mean_(torch.cat([grad.reshape(-1) for grad in grads]))
    for param, part in zip(params, flat.split([p.numel() for p in params]), strict=True):
        param.grad = part.view_as(param).clone()


def average_parameters(module: nn.Module) -> None:
    """Average the parameters over ranks: data-dependent initializations (b_dec = the first buffer's
    mean) become the global ones; parameters already equal stay exactly equal."""
    with torch.no_grad():
        for param in module.parameters():
            all_mean_(param.data)


def main_decides(flag: bool) -> bool:
    """Rank 0's `flag`, on every rank (decisions that depend on a clock)."""
    if world_size() < 2:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() < 2:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
