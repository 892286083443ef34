"""What a run will cost before it starts: tokens, disk, peak memory and time per stage.

Pure arithmetic over the run's shape (`RunShape`) and two measured speeds (`Speeds`, from a micro-benchmark
on this machine, `randsae.speed`), so the figures can be checked by hand. The memory figures are estimates
of the largest tensors a stage holds (model weights, a batch's activations, an SAE with Adam), not a bound.
"""

from __future__ import annotations

import dataclasses

from randsae.errors import UserError

DISK_MARGIN_BYTES = 256 * 2**20
"""Free space a run leaves on its file system beyond its own estimated need."""
TOKEN_FILE_BYTES = 4
"""int32 token ids."""
PYTHON_INT_BYTES = 36
"""A token id held in a Python list while a chunk of windows is packed (pointer + int object)."""


@dataclasses.dataclass(frozen=True)
class RunShape:
    """The sizes a run's cost follows from (tokens are whole windows, BOS included)."""

    variants: int
    """Models built: each variant's random draws counted apart (`[replicates] variant_seeds`)."""
    layers: int
    train_tokens: int
    heldout_tokens: int
    heldout_fraction: float
    """Share of documents that go to the held-out split: the text tokenized is what fills both splits."""
    context_size: int
    skip_bos: bool
    d_model: int
    d_sae: int
    n_params: int
    param_bytes: int
    activation_bytes: int
    harvest_batch_windows: int
    train_batch_tokens: int
    train_steps: int
    buffer_tokens: int
    streamed: bool
    """Train activations streamed from forwards during training (no train cache) rather than cached."""
    processes: int
    """Data-parallel processes (torchrun); they share the streamed forwards and the SAE steps."""
    ce_windows: int
    chunk_windows: int
    analysis_max_tokens: int
    seed_stability: bool
    token_judge: bool
    """Auto-interp with the offline token judge (an LLM judge's replies are not estimated)."""
    k: int | None = None
    """TopK's k (the latent cache of auto-interp keeps k activations per token); None for other SAEs."""
    sae_seeds: int = 1
    """SAEs per model and layer (`[replicates] sae_seeds`); streamed, each seed streams its own forwards."""

    @property
    def saes(self) -> int:
        return self.variants * self.layers * self.sae_seeds

    @property
    def sae_bytes(self) -> int:
        """Encoder and decoder (float32) and their biases."""
        return (2 * self.d_model * self.d_sae + self.d_sae + self.d_model) * 4

    def cache_bytes(self, tokens: int) -> int:
        return tokens * self.d_model * self.activation_bytes

    def heldout_windows(self) -> int:
        return self.heldout_tokens // self.context_size

    def streamed_windows(self) -> int:
        """Train windows forwarded over every pass of a streamed training (all processes together): its rows
        read, `train_steps` batches, at `context_size` (less BOS when skipped) rows a window."""
        return -(-self.train_steps * self.train_batch_tokens // (self.context_size - int(self.skip_bos)))

    def analysed_windows(self) -> int:
        """Held-out windows the analysis encodes per SAE (at most half of them when streamed: the token
        lookup is fit on the others)."""
        limit = self.heldout_windows() // 2 if self.streamed else self.heldout_windows()
        return max(1, min(limit, self.analysis_max_tokens // self.context_size))

    def tokenized_text_tokens(self) -> int:
        """Tokens of text tokenized until both splits are full (documents go to held-out at its fraction)."""
        return round(max(self.train_tokens / (1 - self.heldout_fraction), self.heldout_tokens / self.heldout_fraction))


@dataclasses.dataclass(frozen=True)
class Speeds:
    """Measured on this machine."""

    forward_s: float
    """Seconds of one forward of `harvest_batch_windows` windows through the blocks up to the deepest layer."""
    sae_step_s: float
    """Seconds of one SAE training step on `train_batch_tokens` tokens."""
    full_forward_s: float
    """Seconds of one forward of `harvest_batch_windows` windows through the whole model (with the logits)."""
    tokenize_tokens_per_s: float | None
    """The tokenizer's throughput on the configured text; None where it was not measured (no text to read)."""


@dataclasses.dataclass(frozen=True)
class StageEstimate:
    name: str
    tokens: int
    disk_bytes: int
    memory_bytes: int
    seconds: float | None
    """None where a stage's time does not follow from the measured speeds (an LLM judge's replies)."""


def estimate_stages(shape: RunShape, speeds: Speeds | None) -> list[StageEstimate]:
    """The run's stages in order; `speeds` None leaves every time out.

    Streamed, the train harvest is replaced by the forwards training makes over the train windows, pass after
    pass (no disk); they and the SAE steps are shared by the processes. Memory is one process's.
    """
    s = shape
    model = s.n_params * s.param_bytes
    batch_tokens = s.harvest_batch_windows * s.context_size
    forward_memory = model + batch_tokens * s.d_model * 4 * (s.layers + 2)
    adam = 3 * s.sae_bytes  # weights, gradients and Adam's two moments, beside the weights themselves
    row_bytes = (s.d_model + 2 * s.d_sae) * 4  # a row's input, latents and their gradient
    sae_batch = s.train_batch_tokens * row_bytes
    batch_rows = s.train_batch_tokens // s.processes  # one process's share of a training step's batch
    # The shuffle buffer's peak (TrainConfig.buffer_tokens), never more than the rows trained on; cached, a
    # buffer ends with the cache's epoch. Streamed, every layer's SAE trains at once beside the model, each
    # process buffering its share of every layer's rows.
    if s.streamed:
        buffer_rows = min(max(s.buffer_tokens // s.train_batch_tokens, 1), s.train_steps) * batch_rows
        train_memory = forward_memory + 2 * buffer_rows * s.layers * s.d_model * 4 + s.layers * (s.sae_bytes + adam)
    else:
        buffer_rows = min(max(s.buffer_tokens, s.train_batch_tokens), s.train_tokens)
        train_memory = 4 * buffer_rows * s.d_model * 4 + s.sae_bytes + adam
    ce_batches = -(-min(s.ce_windows, s.heldout_windows()) // s.harvest_batch_windows)
    ce_forwards = ce_batches * (1 + s.layers * (1 + s.sae_seeds))  # clean; zero-ablated per layer; per SAE
    heldout_steps = -(-s.heldout_tokens // s.train_batch_tokens)
    analysed_tokens = s.analysed_windows() * s.context_size
    second_seed = int(s.seed_stability and not s.streamed)  # seed stability retrains on train caches only
    latent_entry = 4 + (2 if s.d_sae < 2**15 else 4) + 2
    train_harvest = "stream train" if s.streamed else "harvest train"
    forwarded = s.streamed_windows() * s.context_size * s.sae_seeds if s.streamed else s.train_tokens
    train_forwarded = s.variants * forwarded
    train_cache = 0 if s.streamed else s.variants * s.layers * s.cache_bytes(s.train_tokens)
    stages = [
        ("tokenize", s.train_tokens + s.heldout_tokens, (s.train_tokens + s.heldout_tokens) * TOKEN_FILE_BYTES,
         model + s.chunk_windows * s.context_size * PYTHON_INT_BYTES),
        (train_harvest, train_forwarded, train_cache, forward_memory),
        ("harvest heldout", s.variants * s.heldout_tokens, s.variants * s.layers * s.cache_bytes(s.heldout_tokens),
         forward_memory),
        ("train", s.saes * s.train_steps * s.train_batch_tokens, s.saes * s.sae_bytes,
         train_memory + batch_rows * row_bytes),
        ("evaluate", s.variants * s.heldout_tokens, 0, model + s.layers * s.sae_bytes + sae_batch),
        ("interp", s.variants * s.heldout_tokens,
         s.saes * s.heldout_tokens * (s.k or 0) * latent_entry, s.sae_bytes + sae_batch),
        ("analysis", s.variants * analysed_tokens, s.saes * s.sae_bytes * second_seed,
         s.sae_bytes + adam * second_seed + sae_batch),
    ]  # fmt: skip
    seconds: dict[str, float | None] = {}
    if speeds is not None:
        forward_s = speeds.forward_s / batch_tokens  # a token's share of a forward
        rate = speeds.tokenize_tokens_per_s
        analysis_steps = -(-analysed_tokens // s.train_batch_tokens) + s.train_steps * second_seed
        seconds = {
            "tokenize": None if rate is None else s.tokenized_text_tokens() / rate,
            train_harvest: train_forwarded * forward_s / s.processes,
            "harvest heldout": s.variants * s.heldout_tokens * forward_s,
            "train": s.saes * s.train_steps * speeds.sae_step_s / s.processes,
            "evaluate": s.variants * ce_forwards * speeds.full_forward_s + s.saes * heldout_steps * speeds.sae_step_s,
            "interp": s.saes * heldout_steps * speeds.sae_step_s if s.token_judge else None,
            "analysis": s.saes * analysis_steps * speeds.sae_step_s,
        }
    return [StageEstimate(name, tokens, disk, memory, seconds.get(name)) for name, tokens, disk, memory in stages]


def total_disk(stages: list[StageEstimate]) -> int:
    return sum(stage.disk_bytes for stage in stages)


def check_disk(need: int, free: int, out: str) -> None:
    """Stop before anything is written when the run's remaining disk need does not fit `out`'s free space."""
    if need + DISK_MARGIN_BYTES > free:
        raise UserError(
            f"the run needs about {human_bytes(need)} of disk but {out} has {human_bytes(free)} free "
            f"(keeping {human_bytes(DISK_MARGIN_BYTES)} spare)",
            "Lower tokens.train_tokens, layers or variants, or pass an --out on a file system with more space",
        )


def format_plan(stages: list[StageEstimate]) -> str:
    """The plan as a table, with the totals (time: the stages that have one; memory: the largest)."""
    rows = [("stage", "tokens", "disk", "peak memory", "time")]
    for stage in stages:
        time = "-" if stage.seconds is None else human_seconds(stage.seconds)
        rows.append(
            (stage.name, f"{stage.tokens:,}", human_bytes(stage.disk_bytes), human_bytes(stage.memory_bytes), time)
        )
    known = [stage.seconds for stage in stages if stage.seconds is not None]
    rows.append((
        "total", "", human_bytes(total_disk(stages)), human_bytes(max(stage.memory_bytes for stage in stages)),
        human_seconds(sum(known)) if known else "-",
    ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return (
        "plan (estimates; peak memory: the stage's largest tensors, per process; time: a micro-benchmark here, "
        "scaled up; interp: the token judge's time, an LLM judge's replies not included; '-': not estimated):\n"
        + "\n".join(lines)
    )


def human_bytes(n: int) -> str:
    """Decimal units: 1 MB = 10^6 bytes."""
    if n < 1000:
        return f"{n} B"
    size = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1000
        if size < 1000 or unit == "TB":
            break
    return f"{size:.1f} {unit}"


def human_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
