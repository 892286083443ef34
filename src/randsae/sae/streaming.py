"""Train one SAE per layer straight from a model's forwards, with no activation cache.

Each truncated forward over a batch of train windows yields every layer's residual stream at once; its
non-BOS rows join an in-memory buffer of `buffer_tokens` rows that is shuffled before it is served as
batches, so the rows of one forward spread over many batches. The windows are read pass after pass until
exactly `n_steps * batch_size` rows are read, so each row is trained on as often as the configured passes
say. Every SAE takes one optimizer step per batch, on its own layer's rows (`SAETraining`, as cached).

Checkpoints are taken between buffers, where the stream's whole state is small (windows read, the rows
left over from the last buffer, the shuffle generator), so a resumed training reads on from there and ends
with the SAEs of an uninterrupted one.
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

from randsae.sae.base import SAEConfig
from randsae.sae.trainer import (
    SAETraining,
    TrainConfig,
    TrainResult,
    load_checkpoint,
    n_train_steps,
    save_checkpoint,
)

Forward = Callable[[int, Tensor], dict[int, Tensor]]
"""(index of the first window, token ids [b, C]) -> {layer: residual stream [b, C, d]}."""


class ActivationStream:
    """Shuffled buffers [n_layers, whole batches, d] of the rows of forwards over `input_ids` [n_windows, C].

    Position 0 of each window (BOS) is left out when `cfg.skip_bos`. A forward reads at most
    `forward_windows` windows and never crosses the end of a pass.
    """

    def __init__(
        self,
        forward: Forward,
        input_ids: Tensor,
        layers: Sequence[int],
        cfg: TrainConfig,
        forward_windows: int,
        seed: int,
    ):
        self.forward, self.input_ids, self.layers = forward, input_ids, tuple(layers)
        self.cfg, self.forward_windows = cfg, forward_windows
        self.buffer_rows = max(cfg.buffer_tokens, cfg.batch_size)
        self.rows_per_window = input_ids.shape[1] - int(cfg.skip_bos)
        self.n_steps = n_train_steps(input_ids.shape[0] * self.rows_per_window, cfg)
        self.generator = torch.Generator().manual_seed(seed)
        self.rows_read = 0
        self.leftover: Tensor | None = None

    @property
    def rows_to_read(self) -> int:
        return self.n_steps * self.cfg.batch_size - self.rows_read

    def next_buffer(self) -> Tensor:
        """The next shuffled buffer; rows past its last whole batch are kept for the next one."""
        pending = [] if self.leftover is None else [self.leftover]
        n_pending = sum(part.shape[1] for part in pending)
        while n_pending < self.buffer_rows and self.rows_to_read > 0:
            pending.append(self._read_forward())
            n_pending += pending[-1].shape[1]
        buffer = torch.cat(pending, dim=1)
        order = torch.randperm(buffer.shape[1], generator=self.generator).to(buffer.device)
        buffer = buffer[:, order]
        n_whole = buffer.shape[1] // self.cfg.batch_size * self.cfg.batch_size
        self.leftover = buffer[:, n_whole:].clone()
        return buffer[:, :n_whole]

    def _read_forward(self) -> Tensor:
        """The rows [n_layers, n, d] of one forward, cut to the rows still to read."""
        n_windows = self.input_ids.shape[0]
        first = self.rows_read // self.rows_per_window % n_windows
        needed = -(-self.rows_to_read // self.rows_per_window)
        ids = self.input_ids[first : first + min(self.forward_windows, needed)]
        outputs = self.forward(first, ids)
        rows = torch.stack([outputs[layer] for layer in self.layers])[:, :, int(self.cfg.skip_bos) :]
        rows = rows.reshape(len(self.layers), -1, rows.shape[-1])[:, : self.rows_to_read].float()
        self.rows_read += rows.shape[1]
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "leftover": self.leftover, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows_read, self.leftover = state["rows_read"], state["leftover"]
        self.generator.set_state(state["generator"].cpu())


def train_streaming(
    stream: ActivationStream,
    sae_cfgs: Sequence[SAEConfig],
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> list[TrainResult]:
    """Train one SAE per layer of `stream` (`sae_cfgs` in its layers' order) on its batches.

    With `checkpoint` (a file path), the state of every SAE and of the stream is saved there atomically
    between buffers, at most every `checkpoint_every_s` seconds; a later call with the same arguments
    resumes from it and ends with the same SAEs as an uninterrupted run. The file is removed at the end.
    """
    cfg, n_steps = stream.cfg, stream.n_steps
    fingerprint = json.dumps(
        [dataclasses.asdict(cfg), [c.to_json() for c in sae_cfgs], seed, stream.input_ids.numel(), stream.layers]
    )
    resumed = load_checkpoint(checkpoint, fingerprint, device)
    if resumed is None:
        buffer: Tensor | None = stream.next_buffer()
    else:
        stream.load_state_dict(resumed["stream"])
        buffer = None
    first = buffer if buffer is not None else torch.zeros(len(sae_cfgs), 1, sae_cfgs[0].d_in)
    trainings = [
        SAETraining(sae_cfg, cfg, seed, n_steps, first[index], device) for index, sae_cfg in enumerate(sae_cfgs)
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
        disable=not progress,
        desc=f"train {len(trainings)} SAEs (streamed)",
    )
    start = last_save = time.perf_counter()
    while step < n_steps:
        if buffer is None:
            if checkpoint is not None and time.perf_counter() - last_save >= cfg.checkpoint_every_s:
                state = {
                    "fingerprint": fingerprint,
                    "wall": wall_before + time.perf_counter() - start,
                    "stream": stream.state_dict(),
                    "saes": [training.state_dict() for training in trainings],
                }
                save_checkpoint(checkpoint, state)
                last_save = time.perf_counter()
            buffer = stream.next_buffer()
        for index in range(0, buffer.shape[1], cfg.batch_size):
            batch = buffer[:, index : index + cfg.batch_size]
            points = [training.train_on(batch[layer]) for layer, training in enumerate(trainings)]
            if points[0] is not None:
                bar.set_postfix(fvu=f"{points[0].fvu:.3f}")
            bar.update(cfg.batch_size)
        step, buffer = trainings[0].step, None
    bar.close()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    wall_here = time.perf_counter() - start
    return [training.result(wall_before + wall_here, wall_here, n_steps - first_step) for training in trainings]
