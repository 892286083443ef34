"""Train one SAE per layer straight from a model's forwards, with no activation cache.

Each truncated forward over a batch of train windows yields every layer's residual stream at once; its
non-BOS rows join an in-memory buffer of `buffer_tokens` rows that is shuffled before it is served as
batches, so the rows of one forward spread over many batches. The windows are read pass after pass until
exactly `n_steps * batch_size` rows are read, so each row is trained on as often as the configured passes
say. Every SAE takes one optimizer step per batch, on its own layer's rows (`SAETraining`, as cached).

Checkpoints are taken between buffers, where the stream's whole state is small (windows read, the rows
left over from the last buffer, the shuffle generator), so a resumed training reads on from there and ends
with the SAEs of an uninterrupted one.

Data-parallel under torchrun (`randsae.sae.distributed`), each rank streams its own contiguous shard of
the windows and serves batches of batch_size / world_size rows; every buffer holds the same number of
batches on every rank, so all ranks reach each checkpoint at the same step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from randsae.errors import UserError
from randsae.sae import distributed
from randsae.sae.base import SAEConfig, start_recipe
from randsae.sae.trainer import (
    SAETraining,
    TrainConfig,
    TrainResult,
    load_checkpoint,
    n_train_steps,
    save_checkpoint,
)
from randsae.seeds import derived_seed

Forward = Callable[[int, Tensor], dict[int, Tensor]]
"""(index of the first window, token ids [b, C]) -> {layer: residual stream [b, C, d]}."""


class ActivationStream:
    """Shuffled buffers [n_layers, batches, d] of the rows of forwards over `input_ids` [n_windows, C].

    The rows where `keep` (bool [n_windows, C], `randsae.data.tokens.counted`) are served; None leaves out
    position 0 (BOS) as `cfg.skip_bos` says. A forward reads at most `forward_windows` windows and never
    crosses the end of a pass. With `world_size` > 1 it reads shard `rank` of the windows and serves this
    rank's part (batch_size / world_size rows) of each batch.
    """

    def __init__(
        self,
        forward: Forward,
        input_ids: Tensor,
        layers: Sequence[int],
        cfg: TrainConfig,
        forward_windows: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        keep: Tensor | None = None,
    ):
        if cfg.batch_size % world_size:
            raise UserError(
                f"train.batch_size = {cfg.batch_size} does not split evenly over {world_size} processes",
                f"Set train.batch_size to a multiple of {world_size}, or run another number of processes",
            )
        if input_ids.shape[0] < world_size:
            raise UserError(
                f"{input_ids.shape[0]} train windows cannot be shared by {world_size} processes",
                "Use more train tokens or fewer processes",
            )
        self.layers, self.cfg, self.forward, self.forward_windows = tuple(layers), cfg, forward, forward_windows
        self.n_tokens = input_ids.numel()
        if keep is None:
            keep = torch.ones(input_ids.shape, dtype=torch.bool)
            keep[:, 0] = not cfg.skip_bos
        self.n_steps = n_train_steps(int(keep.sum()), cfg)
        shards = torch.tensor_split(torch.arange(input_ids.shape[0]), world_size)
        self.first_window = int(shards[rank][0])
        self.input_ids = input_ids[self.first_window : self.first_window + len(shards[rank])]
        self.keep = keep[self.first_window : self.first_window + len(shards[rank])]
        self.window_rows = self.keep.sum(1)
        if int(self.window_rows.sum()) == 0:
            raise UserError(f"train windows {self.first_window}.. hold no token to train on", "Use more train tokens")
        self.batch_rows = cfg.batch_size // world_size
        self.batches_per_buffer = max(cfg.buffer_tokens // cfg.batch_size, 1)
        self.generator = torch.Generator().manual_seed(derived_seed(seed, f"stream shard {rank}") if rank else seed)
        self.rows_read = self.windows_read = 0
        self.leftover: Tensor | None = None

    @property
    def rows_to_read(self) -> int:
        return self.n_steps * self.batch_rows - self.rows_read

    def next_buffer(self) -> Tensor:
        """The next shuffled buffer of `batches_per_buffer` batches (fewer at the end); the rows past them
        are kept for the next one."""
        pending = [] if self.leftover is None else [self.leftover]
        n_pending = sum(part.shape[1] for part in pending)
        n_served = min(self.batches_per_buffer * self.batch_rows, n_pending + self.rows_to_read)
        while n_pending < n_served:
            pending.append(self._read_forward())
            n_pending += pending[-1].shape[1]
        buffer = torch.cat([part.to(pending[-1].device) for part in pending], dim=1)
        order = torch.randperm(buffer.shape[1], generator=self.generator).to(buffer.device)
        buffer = buffer[:, order]
        self.leftover = buffer[:, n_served:].clone()
        return buffer[:, :n_served]

    def _read_forward(self) -> Tensor:
        """The kept rows [n_layers, n, d] of one forward, cut to the rows still to read. The forward covers
        the windows up to the one that completes the rows still to read (at most `forward_windows`)."""
        n_windows = self.input_ids.shape[0]
        first = self.windows_read % n_windows
        available = self.window_rows[first : first + self.forward_windows].cumsum(0)
        count = min(int(torch.searchsorted(available, self.rows_to_read)) + 1, available.numel())
        outputs = self.forward(self.first_window + first, self.input_ids[first : first + count])
        keep = self.keep[first : first + count].to(outputs[self.layers[0]].device)
        rows = torch.stack([outputs[layer][keep] for layer in self.layers])[:, : self.rows_to_read].float()
        self.rows_read += rows.shape[1]
        self.windows_read += count
        return rows

    def state_dict(self) -> dict[str, Any]:
        leftover = None if self.leftover is None else self.leftover.cpu()
        return {
            "rows_read": self.rows_read,
            "windows_read": self.windows_read,
            "leftover": leftover,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows_read, self.windows_read, self.leftover = state["rows_read"], state["windows_read"], state["leftover"]
        self.generator.set_state(state["generator"].cpu())


def train_streaming(
    stream: ActivationStream,
    sae_cfgs: Sequence[SAEConfig],
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    heldout: Sequence[Tensor | None] = (),
) -> list[TrainResult]:
    """Train one SAE per layer of `stream` (`sae_cfgs` in its layers' order) on its batches; with `heldout`
    (rows [n, d] per layer, in the same order), each log holds its held-out learning curve.

    With `checkpoint` (a file path), the state of every SAE and of the stream is saved there atomically
    between buffers, at most every `checkpoint_every_s` seconds; a later call with the same arguments
    resumes from it and ends with the same SAEs as an uninterrupted run. The file is removed at the end.

    Data-parallel, every rank calls it with its shard's stream; all return the same SAEs. Rank 0 alone
    writes the checkpoint (holding every rank's stream state); every rank reads it to resume, so it must
    sit on a file system they share.
    """
    cfg, n_steps = stream.cfg, stream.n_steps
    world = distributed.world_size()
    fingerprint = json.dumps(
        [
            dataclasses.asdict(cfg),
            [c.to_json() for c in sae_cfgs],
            seed,
            stream.n_tokens,
            stream.layers,
            world,
            [start_recipe(c) for c in sae_cfgs],
        ]
    )
    resumed = load_checkpoint(checkpoint, fingerprint, device)
    if resumed is None:
        buffer: Tensor | None = stream.next_buffer()
    else:
        stream.load_state_dict(resumed["streams"][distributed.rank()])
        buffer = None
    first = buffer if buffer is not None else torch.zeros(len(sae_cfgs), 1, sae_cfgs[0].d_in)
    trainings = [
        SAETraining(sae_cfg, cfg, seed, n_steps, first[index], device, heldout[index] if heldout else None)
        for index, sae_cfg in enumerate(sae_cfgs)
    ]
    del first
    wall_before = 0.0
    if resumed is not None:
        for training, state in zip(trainings, resumed["saes"], strict=True):
            training.load_state_dict(state)
        wall_before = resumed["wall"]
    first_step = step = trainings[0].step
    bar = tqdm(
        total=n_steps * cfg.batch_size,
        initial=step * cfg.batch_size,
        unit="tok",
        unit_scale=True,
        disable=not progress or not distributed.is_main(),
        desc=f"train {len(trainings)} SAEs (streamed)",
    )
    start = last_save = time.perf_counter()
    while step < n_steps:
        if buffer is None:
            due = checkpoint is not None and time.perf_counter() - last_save >= cfg.checkpoint_every_s
            if distributed.main_decides(due) and checkpoint is not None:
                streams = distributed.gather(stream.state_dict())
                if distributed.is_main():
                    state = {
                        "fingerprint": fingerprint,
                        "wall": wall_before + time.perf_counter() - start,
                        "streams": streams,
                        "saes": [training.state_dict() for training in trainings],
                    }
                    save_checkpoint(checkpoint, state)
                last_save = time.perf_counter()
            buffer = stream.next_buffer()
        for index in range(0, buffer.shape[1], stream.batch_rows):
            batch = buffer[:, index : index + stream.batch_rows]
            points = [training.train_on(batch[layer]) for layer, training in enumerate(trainings)]
            if points[0] is not None:
                bar.set_postfix(fvu=f"{points[0].fvu:.3f}")
            bar.update(cfg.batch_size)
        step, buffer = trainings[0].step, None
    bar.close()
    if checkpoint is not None and distributed.is_main():
        Path(checkpoint).unlink(missing_ok=True)
    wall_here = time.perf_counter() - start
    return [training.result(wall_before + wall_here, wall_here, n_steps - first_step) for training in trainings]
