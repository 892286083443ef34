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
    layers: int
    train_tokens: int
    heldout_tokens: int
    context_size: int
    d_model: int
    d_sae: int
    n_params: int
    param_bytes: int
    activation_bytes: int
    harvest_batch_windows: int
    train_batch_tokens: int
    train_steps: int
    ce_windows: int
    chunk_windows: int
    k: int | None = None
    """TopK's k (the latent cache of auto-interp keeps k activations per token); None for other SAEs."""

    @property
    def sae_bytes(self) -> int:
        """Encoder and decoder (float32) and their biases."""
        return (2 * self.d_model * self.d_sae + self.d_sae + self.d_model) * 4

    def cache_bytes(self, tokens: int) -> int:
        return tokens * self.d_model * self.activation_bytes

    def heldout_windows(self) -> int:
        return self.heldout_tokens // self.context_size


@dataclasses.dataclass(frozen=True)
class Speeds:
    """Seconds measured on this machine."""

    forward_s: float
    """One forward of `harvest_batch_windows` windows through the blocks up to the deepest layer."""
    sae_step_s: float
    """One SAE training step on `train_batch_tokens` tokens."""
    full_forward_s: float
    """One forward of `harvest_batch_windows` windows through the whole model (with the logits)."""


@dataclasses.dataclass(frozen=True)
class StageEstimate:
    name: str
    tokens: int
    disk_bytes: int
    memory_bytes: int
    seconds: float | None
    """None where a stage's time does not follow from the measured speeds (an LLM judge's replies)."""


def estimate_stages(shape: RunShape, speeds: Speeds | None) -> list[StageEstimate]:
    """The run's stages in order; `speeds` None leaves every time out."""
    s = shape
    model = s.n_params * s.param_bytes
    batch_tokens = s.harvest_batch_windows * s.context_size
    per_variant_forwards = -(-(s.train_tokens + s.heldout_tokens) // batch_tokens)
    adam = 3 * s.sae_bytes  # weights, gradients and Adam's two moments, beside the weights themselves
    train_batch = s.train_batch_tokens * (s.d_model + 2 * s.d_sae) * 4
    ce_batches = -(-min(s.ce_windows, s.heldout_windows()) // s.harvest_batch_windows)
    ce_forwards = ce_batches * (1 + 2 * s.layers)  # clean, then zero-ablated and SAE-spliced per layer
    heldout_steps = -(-s.heldout_tokens // s.train_batch_tokens)
    latent_entry = 4 + (2 if s.d_sae < 2**15 else 4) + 2
    stages = [
        ("tokenize", s.train_tokens + s.heldout_tokens, (s.train_tokens + s.heldout_tokens) * TOKEN_FILE_BYTES,
         model + s.chunk_windows * s.context_size * PYTHON_INT_BYTES),
        ("harvest train", s.variants * s.train_tokens, s.variants * s.layers * s.cache_bytes(s.train_tokens),
         model + batch_tokens * s.d_model * 4 * (s.layers + 2)),
        ("harvest heldout", s.variants * s.heldout_tokens, s.variants * s.layers * s.cache_bytes(s.heldout_tokens),
         model + batch_tokens * s.d_model * 4 * (s.layers + 2)),
        ("train", s.variants * s.layers * s.train_steps * s.train_batch_tokens, s.variants * s.layers * s.sae_bytes,
         s.sae_bytes + adam + train_batch),
        ("evaluate", s.variants * s.heldout_tokens, 0, model + s.layers * s.sae_bytes + train_batch),
        ("interp", s.variants * s.heldout_tokens,
         s.variants * s.layers * s.heldout_tokens * (s.k or 0) * latent_entry, s.sae_bytes + train_batch),
        ("analysis", s.variants * s.heldout_tokens, 0, s.sae_bytes + train_batch),
    ]  # fmt: skip
    if speeds is not None:
        harvest = {
            split: s.variants * per_variant_forwards * speeds.forward_s * tokens / (s.train_tokens + s.heldout_tokens)
            for split, tokens in (("train", s.train_tokens), ("heldout", s.heldout_tokens))
        }
        seconds = {
            "tokenize": None,
            "harvest train": harvest["train"],
            "harvest heldout": harvest["heldout"],
            "train": s.variants * s.layers * s.train_steps * speeds.sae_step_s,
            "evaluate": s.variants
            * (ce_forwards * speeds.full_forward_s + s.layers * heldout_steps * speeds.sae_step_s),
            "interp": s.variants * s.layers * heldout_steps * speeds.sae_step_s,
            "analysis": None,
        }
    return [
        StageEstimate(name, tokens, disk, memory, seconds[name] if speeds is not None else None)
        for name, tokens, disk, memory in stages
    ]


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
        "plan (estimates; peak memory: the stage's largest tensors; time: a micro-benchmark here, scaled up; "
        "'-': not estimated):\n" + "\n".join(lines)
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
