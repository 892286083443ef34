"""Train any registered SAE architecture on shuffled batches streamed from an activation source.

The source is read in row order, a buffer of `buffer_tokens` rows at a time; each buffer is shuffled with
a seeded generator and served as batches, so memory stays bounded whatever the token count. Adam with
the paper's learning rate (the decoder's at the architecture's `decoder_lr_scale` times it), linear warm-up
then linear decay to 0, gradient-norm clipping, and unit-norm decoder rows (the gradient component along
each row removed before the step, rows renormalized after).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from randsae.atomic import atomic_path, write_text_atomic
from randsae.data.tokens import count_not_bos, not_bos
from randsae.errors import UserError
from randsae.metrics.quality import ReconstructionAccumulator, ratio
from randsae.run_dir import SAE_TRAINING_FILE
from randsae.sae import distributed
from randsae.sae.base import (
    LossOutput,
    SAEConfig,
    SparseAutoencoder,
    architecture_class,
    start_recipe,
)
from randsae.sae.topk import TopKSAE
from randsae.toml_config import invalid


class ActivationSource(Protocol):
    """What the trainer reads: `ActivationCache` provides it, `TensorSource` wraps a tensor."""

    @property
    def n_tokens(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    def iter_chunks(self, rows: int) -> Iterator[Tensor]:
        """Chunks [≤ rows, d_model] of consecutive rows, in row order, covering all `n_tokens` rows."""
        ...


@dataclasses.dataclass(frozen=True, eq=False)
class TensorSource:
    """An in-memory activation source over one [n_tokens, d_model] tensor (tests, notebooks)."""

    activations: Tensor

    @property
    def n_tokens(self) -> int:
        return self.activations.shape[0]

    @property
    def d_model(self) -> int:
        return self.activations.shape[1]

    def iter_chunks(self, rows: int) -> Iterator[Tensor]:
        yield from self.activations.split(rows)


ACTIVATION_MODES = ("auto", "stream", "cache")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train one SAE (the architecture and its size are in `SAEConfig`)."""

    batch_size: int = 8192
    """Tokens per optimizer step (the paper's 4 × 2048)."""
    n_epochs: int = 1
    """Passes over the source, used when `total_tokens` is not set."""
    total_tokens: int | None = None
    """Train on exactly this many (non-BOS) tokens, cycling over the source as often as needed."""
    lr: float | None = None
    """Peak Adam learning rate; unset: the paper's rule 2e-4 / sqrt(d_sae / 2**14) (Gao et al. 2024). The
    decoder trains at its architecture's multiple of it (`decoder_lr_scale`, docs/saes.md)."""
    encoder_init_norm: float | None = None
    """Each encoder column's norm at initialization, its decoder row having norm 1; unset: the architecture's
    (docs/saes.md). 0.577 (1/sqrt(3)) with `decoder_lr_scale = 1` is the reference TopK trainers' start (Gao et
    al.'s code, sparsify), which the paper's SAEs had."""
    decoder_lr_scale: float | None = None
    """The decoder's learning rate as a multiple of `lr`; unset: the architecture's (2 for TopK and the
    BatchTopKs, 1 otherwise)."""
    warmup_steps: int = 1000
    """Linear warm-up from 0, capped at 10% of the steps; then linear decay to 0 at the last step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this, in the units of the loss SAELens clips for the architecture
    (`relu_l1` and `gated`: their squared error summed over d_in, so 1/d_in of our mean-unit losses')."""
    buffer_tokens: int = 2**18
    """Rows shuffled together; peak memory is about 4 x buffer_tokens x d_model x 4 bytes (streamed: about
    2 x buffer_tokens x layers x d_model x 4 bytes, every layer's rows buffered together)."""
    activations: str = "auto"
    """Where an experiment's SAEs read train activations: `cache` (harvested to disk first, then each SAE
    trained on its cache), `stream` (one truncated forward per batch of train windows feeds every layer's
    SAE, through the shuffle buffer; only the held-out split is cached), or `auto`: stream when the
    run's train caches would exceed `cache_limit_gb`."""
    cache_limit_gb: float = 16.0
    """With `activations = "auto"`: the largest train cache (all variants and layers, GB) to write."""
    context_size: int | None = None
    """Tokens per window of the source: row r is position r % context_size, position 0 is BOS. An experiment
    sets it to `tokens.context_size`, so leave it out of a config file."""
    skip_bos: bool = True
    """Leave out the BOS rows (position 0; an outlier in most models). Needs `context_size`."""
    auxk_coefficient: float = 0.0
    """Weight of the AuxK loss on dead latents (Gao et al. use 1/32); 0 turns it off, as in the paper."""
    dead_tokens_fraction: float = 0.1
    """A latent counts as dead (AuxK, and the final log) once it has not fired for this share of the
    training's tokens, at most `dead_tokens_threshold`: with the paper's 100M tokens that is the 10M of
    Gao et al. and sparsify, and a short run still sees dead latents (a fixed 10M never would)."""
    dead_tokens_threshold: int = 10_000_000
    """The most tokens a latent may go without firing before it counts as dead (Gao et al.'s 10M)."""
    log_points: int = 100
    """About how many points the logged loss curve has."""
    checkpoint_every_s: float = 300.0
    """With a `checkpoint` path given to `train_sae`, how often (seconds) to save the training state."""
    topk_selection_dtype: str | None = None
    """TopK only: run the dense encoder product that picks the k latents in this dtype ("bfloat16" is
    faster on CPUs with AMX and on GPUs, see benchmarks/README.md; sparsify autocasts to bf16 likewise).
    The k values and all gradients stay float32. Unset: float32 throughout, as saved SAEs always encode."""
    curve_points: int = 16
    """About how many evenly spaced points the held-out learning curve has (explained variance against training
    tokens, on the `curve_tokens` held-out rows an experiment passes); 0: no curve and no convergence flag."""
    curve_tokens: int = 4096
    """Held-out rows (BOS excluded) each learning-curve point is measured on: the first ones of the site's
    held-out cache."""
    converged_below: float = 0.01
    """An SAE counts as converged when its held-out EV changed by less than this, relative to its final EV,
    over the last quarter of training: |EV(end) - EV(75%)| / |EV(end)| < converged_below."""
    lr_sweep: tuple[float, ...] = ()
    """Peak learning rates to try (replacing `lr`): each SAE is trained at every one, on the same data and
    seed, and the one with the highest EV on selection rows is kept: the last held-out windows holding
    `curve_tokens` non-BOS rows, which the quality metrics then leave out. Empty: one training at `lr`."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_epochs", "buffer_tokens", "dead_tokens_threshold", "log_points", "curve_tokens"):
            if getattr(self, name) < 1:
                raise invalid(f"train.{name}", getattr(self, name), "an integer of at least 1")
        if self.total_tokens is not None and self.total_tokens < self.batch_size:
            raise invalid(
                "train.total_tokens",
                self.total_tokens,
                f"at least one batch (train.batch_size = {self.batch_size}), or leave it out",
            )
        if self.lr is not None and not self.lr > 0:
            raise invalid("train.lr", self.lr, "a positive number, or leave it out for the paper's rule")
        for name in ("encoder_init_norm", "decoder_lr_scale"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise invalid(f"train.{name}", getattr(self, name), "a positive number, or leave it out")
        if self.context_size is not None and self.context_size < 2:
            raise invalid("train.context_size", self.context_size, "the windows' length in tokens (at least 2)")
        if self.topk_selection_dtype not in (None, "bfloat16", "float16", "float32"):
            raise invalid(
                "train.topk_selection_dtype", self.topk_selection_dtype, "bfloat16, float16 or float32, or leave it out"
            )
        if self.activations not in ACTIVATION_MODES:
            raise invalid("train.activations", self.activations, f"one of {', '.join(ACTIVATION_MODES)}")
        for name in ("warmup_steps", "auxk_coefficient", "checkpoint_every_s", "cache_limit_gb"):
            if not getattr(self, name) >= 0:
                raise invalid(f"train.{name}", getattr(self, name), "a number of at least 0")
        if not self.max_grad_norm > 0:
            raise invalid("train.max_grad_norm", self.max_grad_norm, "a positive number")
        if not 0 < self.dead_tokens_fraction <= 1:
            raise invalid("train.dead_tokens_fraction", self.dead_tokens_fraction, "a number in (0, 1]")
        if self.curve_points < 0:
            raise invalid("train.curve_points", self.curve_points, "an integer of at least 0 (0: no learning curve)")
        if self.lr_sweep and (self.lr is not None or not all(lr > 0 for lr in self.lr_sweep)):
            raise invalid("train.lr_sweep", self.lr_sweep, "positive learning rates, with train.lr left out")
        if not self.converged_below > 0:
            raise invalid("train.converged_below", self.converged_below, "a positive number")


class LogPoint(NamedTuple):
    """Training FVU averaged over the steps since the previous point."""

    step: int
    tokens: int
    fvu: float
    lr: float


class CurvePoint(NamedTuple):
    """Held-out explained variance (pooled, about the mean) after `step` steps."""

    step: int
    tokens: int
    explained_variance: float


class LrCandidate(NamedTuple):
    """One rate of a learning-rate sweep and its SAE's explained variance on the selection rows."""

    lr: float
    explained_variance: float


@dataclasses.dataclass(frozen=True)
class TrainLog:
    """What happened during training; written next to the SAE as training.json."""

    steps: int
    tokens: int
    final_fvu: float
    """Mean training-batch FVU over the last logged interval."""
    dead_fraction: float
    """Latents that did not fire in the last `dead_threshold(config, tokens)` training tokens."""
    loss_curve: tuple[LogPoint, ...]
    peak_lr: float
    warmup_steps: int
    wall_time_s: float
    """The training loop (after the first buffer is read and b_dec initialized)."""
    tokens_per_s: float
    seed: int
    config: TrainConfig
    encoder_init_norm: float
    """The SAE's start (`SparseAutoencoder.encoder_init_norm`, `decoder_lr_scale`): code, not config, so logged
    to tell SAEs trained before and after a change of it apart."""
    decoder_lr_scale: float
    heldout_curve: tuple[CurvePoint, ...] = ()
    """Held-out EV at the `curve_steps`; empty without held-out rows or with curve_points = 0."""
    ev_change_last_quarter: float | None = None
    """(EV(end) - EV(75% of the steps)) / |EV(end)| on the held-out curve; None without a curve."""
    converged: bool | None = None
    """|ev_change_last_quarter| < config.converged_below; None without a curve."""
    lr_sweep: tuple[LrCandidate, ...] = ()
    """Every candidate of `train.lr_sweep` (`randsae.sae.lr_sweep`); this log is the kept one's."""

    def to_json(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["loss_curve"] = [point._asdict() for point in self.loss_curve]
        fields["heldout_curve"] = [point._asdict() for point in self.heldout_curve]
        fields["lr_sweep"] = [candidate._asdict() for candidate in self.lr_sweep]
        return fields


@dataclasses.dataclass(frozen=True)
class TrainResult:
    sae: SparseAutoencoder
    log: TrainLog

    def save(self, folder: str | os.PathLike) -> None:
        """The SAELens folder plus training.json, each written atomically."""
        folder = Path(folder)
        self.sae.save(folder)
        write_text_atomic(folder / SAE_TRAINING_FILE, json.dumps(self.log.to_json(), indent=2))


def default_lr(d_sae: int) -> float:
    """Gao et al. 2024's scaling law for the learning rate, as the paper uses it."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def lr_factor(step: int, warmup_steps: int, n_steps: int) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warm-up, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return (n_steps - step) / (n_steps - warmup_steps)


def quarter_step(n_steps: int) -> int:
    """The step at 75% of training, where the convergence flag's reference EV is measured."""
    return -(-3 * n_steps // 4)


def curve_steps(n_steps: int, points: int) -> frozenset[int]:
    """Steps after which held-out EV is measured: `points` evenly spaced ones ending at the last step, and
    `quarter_step` (one of them when `points` is a multiple of 4 dividing the steps)."""
    if points == 0:
        return frozenset()
    return frozenset(-(-i * n_steps // points) for i in range(1, points + 1)) | {quarter_step(n_steps)}


def convergence(curve: Sequence[CurvePoint], n_steps: int, threshold: float) -> tuple[float | None, bool | None]:
    """(relative EV change over the last quarter, whether it is below `threshold`); (None, None) when the curve
    lacks either end, or training is too short (under 4 steps) to have a last quarter."""
    ev = {point.step: point.explained_variance for point in curve}
    start = quarter_step(n_steps)
    if start == n_steps or start not in ev or n_steps not in ev:
        return None, None
    change = ratio(ev[n_steps] - ev[start], abs(ev[n_steps]))
    return change, abs(change) < threshold


@torch.no_grad()
def explained_variance(sae: SparseAutoencoder, rows: Tensor, chunk_rows: int = 1024) -> float:
    """The SAE's pooled explained variance on `rows` [n, d_in], as the quality metrics define it."""
    accumulator = ReconstructionAccumulator(sae.cfg.d_in, sae.cfg.d_sae)
    for x in rows.split(chunk_rows):
        z = sae.encode(x)
        accumulator.add(x, sae.decode(z), z)
    return accumulator.result().explained_variance_pooled


def build_sae(sae_cfg: SAEConfig, seed: int) -> SparseAutoencoder:
    """A freshly initialized SAE of `sae_cfg.architecture`, the same for the same seed."""
    cls = architecture_class(sae_cfg.architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(sae_cfg)


def usable_rows(n_tokens: int, cfg: TrainConfig) -> int:
    """Rows per epoch the trainer uses: all of them, less one BOS per window when skipping."""
    if cfg.skip_bos and cfg.context_size is not None:
        return count_not_bos(n_tokens, cfg.context_size)
    return n_tokens


def shuffled_buffers(
    source: ActivationSource, cfg: TrainConfig, generator: torch.Generator, keep: Tensor | None = None
) -> Iterator[Tensor]:
    """Endless shuffled buffers [multiple of batch_size, d] over epochs of the source's rows where `keep`
    (bool [n_tokens]; None: BOS rows left out as `cfg.skip_bos` says).

    A buffer holds at most 1.25 x buffer_tokens rows (it is served once it reaches buffer_tokens, read a
    quarter at a time). Rows left over after its last whole batch are carried into the next one.
    """
    buffer_rows = max(cfg.buffer_tokens, cfg.batch_size)
    if keep is None and cfg.skip_bos and cfg.context_size is not None:
        keep = not_bos(torch.arange(source.n_tokens), cfg.context_size)
    leftover = torch.empty(0, source.d_model)
    while True:
        pending, n_pending, row = [leftover], leftover.shape[0], 0
        chunks = source.iter_chunks(max(1, min(buffer_rows // 4, 2**16)))
        for chunk in _with_end_marker(chunks):
            if chunk is not None:
                rows = chunk.shape[0]
                if keep is not None:
                    chunk = chunk[keep[row : row + rows]]
                row += rows
                pending.append(chunk.float())
                n_pending += chunk.shape[0]
            if n_pending >= buffer_rows or (chunk is None and n_pending >= cfg.batch_size):
                buffer = torch.cat(pending)
                buffer = buffer[torch.randperm(buffer.shape[0], generator=generator)]
                n_whole = buffer.shape[0] // cfg.batch_size * cfg.batch_size
                yield buffer[:n_whole]
                leftover = buffer[n_whole:]
                pending, n_pending = [leftover], leftover.shape[0]
        leftover = torch.cat(pending)


def _with_end_marker(chunks: Iterator[Tensor]) -> Iterator[Tensor | None]:
    """The chunks, then None: the end of the epoch flushes what is pending."""
    yield from chunks
    yield None


def train_step(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    cfg: TrainConfig,
    dead_mask: Tensor | None = None,
) -> LossOutput:
    """One optimizer step on a batch x [n, d_in]: loss (+ weighted AuxK), backward, removal of the gradient
    along each decoder row, clipping, the update, and decoder rows back to unit norm.

    Data-parallel (`randsae.sae.distributed`), x is this rank's part of the global batch: the loss is
    normalized by the global batch's variance and the gradients averaged, so every rank steps alike; the
    returned `fired` is the global batch's, `fvu` still this rank's share."""
    out = sae.loss(x, dead_mask, distributed.total_variance(x))
    loss = out.loss if out.aux_loss is None else out.loss + cfg.auxk_coefficient * out.aux_loss
    loss.backward()
    distributed.average_gradients(sae)
    sae.remove_parallel_decoder_grad()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), sae.gradient_clip(cfg.max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sae.normalize_decoder()
    return out._replace(fired=distributed.any_rank(out.fired))


class SAETraining:
    """One SAE's training from its first buffer to its log: the SAE, Adam, the lr schedule, the firing counts
    and the loss curve. The cached path (`train_sae`) and the streamed one (`randsae.sae.streaming`) both
    step it, so they share every line of the update."""

    def __init__(
        self,
        sae_cfg: SAEConfig,
        cfg: TrainConfig,
        seed: int,
        n_steps: int,
        first_buffer: Tensor,
        device: str | torch.device,
        heldout: Tensor | None = None,
    ):
        """`heldout` [n, d_in]: the rows the learning curve is measured on (None: no curve)."""
        self.cfg, self.seed, self.n_steps = cfg, seed, n_steps
        self.warmup = min(cfg.warmup_steps, n_steps // 10)
        self.peak_lr = cfg.lr or default_lr(sae_cfg.d_sae)
        self.log_every = max(1, n_steps // cfg.log_points)
        self.sae = build_sae(sae_cfg, seed)
        self.sae.set_run_length(n_steps)
        self.sae.set_start(cfg.encoder_init_norm, cfg.decoder_lr_scale)
        if cfg.topk_selection_dtype is not None:
            if not isinstance(self.sae, TopKSAE):
                raise UserError(
                    f"train.topk_selection_dtype applies to TopK SAEs, not {sae_cfg.architecture}",
                    "Leave topk_selection_dtype unset for this architecture",
                )
            self.sae.selection_dtype = getattr(torch, cfg.topk_selection_dtype)
        self.sae.init_from_data(first_buffer)
        self.sae.to(device)
        distributed.average_parameters(self.sae)
        self.optimizer = torch.optim.Adam(self.sae.parameter_groups(self.peak_lr), fused=True)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.warmup, n_steps)
        )
        self.dead_after = dead_threshold(cfg, n_steps * cfg.batch_size)
        self.since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=device)
        self.fvu_sum = torch.zeros((), device=device)
        self.curve: list[LogPoint] = []
        self.heldout = None if heldout is None else heldout.to(device)
        self.curve_steps = curve_steps(n_steps, cfg.curve_points)
        self.heldout_curve: list[CurvePoint] = []
        self.step = 0

    def train_on(self, batch: Tensor) -> LogPoint | None:
        """One optimizer step on `batch` [batch_size, d_in]; returns the log point when one is due."""
        cfg, step = self.cfg, self.step
        x = batch.to(self.since_fired.device, non_blocking=True)
        dead_mask = self.since_fired >= self.dead_after if cfg.auxk_coefficient > 0 else None
        out = train_step(self.sae, self.optimizer, x, cfg, dead_mask)
        self.schedule.step()
        self.since_fired += x.shape[0] * distributed.world_size()
        self.since_fired[out.fired] = 0
        self.fvu_sum += out.fvu
        self.step = step + 1
        if self.heldout is not None and self.step in self.curve_steps:
            ev = explained_variance(self.sae, self.heldout)
            self.heldout_curve.append(CurvePoint(self.step, self.step * cfg.batch_size, ev))
        if not ((step + 1) % self.log_every == 0 or step + 1 == self.n_steps):
            return None
        steps_in_interval = step + 1 - (self.curve[-1].step if self.curve else 0)
        distributed.all_mean_(self.fvu_sum)
        self.curve.append(
            LogPoint(
                step + 1,
                (step + 1) * cfg.batch_size,
                self.fvu_sum.item() / steps_in_interval,
                self.peak_lr * lr_factor(step, self.warmup, self.n_steps),
            )
        )
        self.fvu_sum.zero_()
        return self.curve[-1]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "since_fired": self.since_fired,
            "fvu_sum": self.fvu_sum,
            "curve": [tuple(point) for point in self.curve],
            "heldout_curve": [tuple(point) for point in self.heldout_curve],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.since_fired, self.fvu_sum = state["since_fired"], state["fvu_sum"]
        self.curve = [LogPoint(*point) for point in state["curve"]]
        self.heldout_curve = [CurvePoint(*point) for point in state["heldout_curve"]]
        self.step = state["step"]

    def result(self, wall: float, wall_here: float, steps_here: int) -> TrainResult:
        """The trained SAE and its log; `wall` is the whole training's time, `wall_here` this process's share,
        in which it took `steps_here` steps."""
        cfg = self.cfg
        tokens = self.n_steps * cfg.batch_size
        dead = self.since_fired >= self.dead_after
        ev_change, converged = convergence(self.heldout_curve, self.n_steps, cfg.converged_below)
        log = TrainLog(
            steps=self.n_steps,
            tokens=tokens,
            final_fvu=self.curve[-1].fvu,
            dead_fraction=dead.float().mean().item(),
            loss_curve=tuple(self.curve),
            peak_lr=self.peak_lr,
            warmup_steps=self.warmup,
            wall_time_s=wall,
            tokens_per_s=steps_here * cfg.batch_size / wall_here,
            seed=self.seed,
            config=cfg,
            encoder_init_norm=self.sae.encoder_init_norm,
            decoder_lr_scale=self.sae.decoder_lr_scale,
            heldout_curve=tuple(self.heldout_curve),
            ev_change_last_quarter=ev_change,
            converged=converged,
        )
        if isinstance(self.sae, TopKSAE):
            self.sae.selection_dtype = None  # the trained SAE encodes exactly, like SAELens
        return TrainResult(self.sae.eval(), log)


def dead_threshold(cfg: TrainConfig, tokens: int) -> int:
    """Tokens without firing after which a latent counts as dead, in a training on `tokens` tokens."""
    return max(1, min(cfg.dead_tokens_threshold, math.ceil(cfg.dead_tokens_fraction * tokens)))


def n_train_steps(rows_per_epoch: int, cfg: TrainConfig) -> int:
    """Optimizer steps of a training over `rows_per_epoch` usable rows; UserError when not even one."""
    n_steps = (cfg.total_tokens or cfg.n_epochs * rows_per_epoch) // cfg.batch_size
    if n_steps < 1:
        raise UserError(
            f"{rows_per_epoch} usable tokens x {cfg.n_epochs} epochs is less than one batch of {cfg.batch_size}",
            "Harvest more tokens, add epochs or lower batch_size",
        )
    return n_steps


def train_sae(
    source: ActivationSource,
    cfg: TrainConfig,
    sae_cfg: SAEConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    keep: Tensor | None = None,
    heldout: Tensor | None = None,
) -> TrainResult:
    """Train a new SAE of `sae_cfg` on the source's activations [n_tokens, d_model]; same seed, same SAE.
    With `heldout` rows [n, d_model], its log holds the held-out learning curve and the convergence flag.

    `keep` (bool [n_tokens]) names the rows to train on (`randsae.data.tokens.counted`); None leaves out the
    BOS rows as `cfg.skip_bos` says.

    The seed fixes the initialization and the shuffling (bit-identical on CPU). With `checkpoint` (a file
    path), the training state is saved there atomically every `cfg.checkpoint_every_s` seconds; a later
    call with the same arguments resumes from it (replaying the data order without computing) and ends
    with the same SAE as an uninterrupted run. The file is removed once training finishes.
    """
    if distributed.world_size() > 1:
        raise UserError(
            "cached SAE training runs in one process", 'Set train.activations = "stream" to train data-parallel'
        )
    if sae_cfg.d_in != source.d_model:
        raise UserError(
            f"SAE d_in={sae_cfg.d_in} but the activations have d_model={source.d_model}",
            "Build the SAEConfig with d_in equal to the activations' width",
        )
    n_rows = usable_rows(source.n_tokens, cfg) if keep is None else int(keep.sum())
    if n_rows == 0:
        raise UserError(
            "the train split holds no token to train on: every one is BOS or a special token",
            "Use more or other text, or set tokens.exclude_special = false",
        )
    n_steps = n_train_steps(n_rows, cfg)
    buffers = shuffled_buffers(source, cfg, torch.Generator().manual_seed(seed), keep)
    first = next(buffers)
    training = SAETraining(sae_cfg, cfg, seed, n_steps, first, device, heldout)
    buffers = itertools.chain([first], buffers)
    del first  # the chain drops it once served: one buffer in memory at a time
    bar = tqdm(
        total=n_steps * cfg.batch_size,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"train {sae_cfg.architecture} SAE",
    )
    batches: Iterator[Tensor] = (batch for buffer in buffers for batch in buffer.split(cfg.batch_size))
    fingerprint = json.dumps(
        [dataclasses.asdict(cfg), sae_cfg.to_json(), seed, source.n_tokens, n_rows, n_steps, start_recipe(sae_cfg)]
    )
    resumed = load_checkpoint(checkpoint, fingerprint, device)
    wall_before = 0.0
    if resumed is not None:
        training.load_state_dict(resumed)
        wall_before = resumed["wall"]
        batches = itertools.islice(batches, training.step, None)
        bar.update(training.step * cfg.batch_size)
    first_step = training.step
    start = last_save = time.perf_counter()
    for _, batch in zip(range(first_step, n_steps), batches, strict=False):
        point = training.train_on(batch)
        if point is not None:
            bar.set_postfix(fvu=f"{point.fvu:.3f}")
        bar.update(batch.shape[0])
        if checkpoint is not None and time.perf_counter() - last_save >= cfg.checkpoint_every_s:
            state = {"fingerprint": fingerprint, "wall": wall_before + time.perf_counter() - start}
            save_checkpoint(checkpoint, {**training.state_dict(), **state})
            last_save = time.perf_counter()
    bar.close()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    wall_here = time.perf_counter() - start
    return training.result(wall_before + wall_here, wall_here, n_steps - first_step)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: str | os.PathLike | None, fingerprint: str, device: str | torch.device
) -> dict[str, Any] | None:
    """The saved state if `path` holds one for exactly this run (same configs, seed and data size).

    A checkpoint is only a shortcut: an unreadable one is reported and training starts from the beginning.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch.load raises many kinds (pickle, zip, EOF, runtime) for a damaged file
        print(
            f"training checkpoint {path} is unreadable ({type(error).__name__}): training from the start",
            file=sys.stderr,
        )
        return None
    return state if isinstance(state, dict) and state.get("fingerprint") == fingerprint else None
