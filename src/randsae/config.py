"""An experiment as frozen dataclasses: read from TOML with strict keys, written back resolved.

Each section of the TOML file is one dataclass of the stage that uses it; an unknown key is an error that
names the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import tomli_w

from randsae.analysis.config import AnalysisConfig
from randsae.data.text import TextConfig
from randsae.data.tokens import TokenConfig
from randsae.errors import UserError
from randsae.interp.config import InterpConfig
from randsae.models.load import ModelConfig
from randsae.models.variants import VariantConfig, check_variant_names
from randsae.sae.trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class SAEShape:
    """Architecture and size of the SAEs trained on every variant and layer."""

    architecture: str = "topk"
    """`topk` (the paper's) or `relu_l1`."""
    expansion: int = 64
    """Latents per residual dimension (d_sae = expansion × d_model)."""
    k: int = 32
    """Active latents per token (TopK)."""
    l1_coefficient: float = 5.0
    """Sparsity penalty (ReLU-L1)."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of every SAE."""

    ce_windows: int = 32
    """Held-out windows used for the CE-loss and KL scores (three or more model forwards each)."""
    batch_windows: int = 8
    """Windows per model forward (harvest and CE evaluation)."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    layers: tuple[int, ...] = (3, 10, 17)
    """Blocks whose output (the residual stream) gets an SAE."""
    variants: tuple[str, ...] = ("trained", "rerandomized", "rerandomized_keep_embeddings", "control")
    device: str = "auto"
    """`auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`..."""
    seed: int = 0
    """Seed of SAE initialization and batch order."""
    activation_dtype: str = "float32"
    """How harvested activations are stored: float32, float16 or bfloat16."""
    model: ModelConfig = ModelConfig()
    data: TextConfig = TextConfig()
    tokens: TokenConfig = TokenConfig()
    variant: VariantConfig = VariantConfig()
    sae: SAEShape = SAEShape()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    interp: InterpConfig = InterpConfig()
    analysis: AnalysisConfig = AnalysisConfig()


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from a TOML table, recursing into nested dataclass fields."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise UserError(f"unknown config key {unknown[0]!r} in {place}",
                        f"Valid keys there: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"config key {name!r} must be a table [{name}]", f"Write it as [{name}] ...")
            values[name] = _build(hint, value, f"{where}.{name}" if where else name)
        else:
            values[name] = _coerce(value, hint, f"{where}.{name}" if where else name)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check a TOML value against a field's type (lists become tuples)."""
    origin = typing.get_origin(hint)
    allowed = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for option in allowed:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if base is tuple and isinstance(value, list):
            return tuple(value)
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(base, type) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
    raise UserError(f"config key {key!r} has the wrong type ({type(value).__name__})",
                    f"Give it a value of type {hint}")


def load_config(path: str | Path | None) -> ExperimentConfig:
    """The embedded default when `path` is None, else the TOML file's settings over the defaults."""
    if path is None:
        cfg = ExperimentConfig()
    else:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist", "Check the path given to --config") from None
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"config file {path} is not valid TOML ({error})", "Fix the syntax at that line") from None
        cfg = _build(ExperimentConfig, data, "")
    check_variant_names(list(cfg.variants))
    if not cfg.layers:
        raise UserError("no layers chosen", "Set layers = [...] in the config")
    return cfg


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
                if getattr(value, field.name) is not None}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML (None values, which TOML cannot hold, are left out)."""
    return tomli_w.dumps(_plain(cfg))
