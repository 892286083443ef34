"""An experiment as frozen dataclasses: read from TOML with strict keys, written back resolved.

Each section of the TOML file is one dataclass of the stage that uses it; an unknown key is an error that
names the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from randsae.analysis.config import AnalysisConfig
from randsae.data.text import TextConfig
from randsae.data.tokens import TokenConfig
from randsae.errors import UserError
from randsae.interp.config import InterpConfig
from randsae.models.load import ModelConfig
from randsae.models.variants import DEFAULT_VARIANTS, VariantConfig, check_variant_names
from randsae.sae.trainer import TrainConfig
from randsae.toml_config import build_dataclass, dump_toml, read_toml


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
    variants: tuple[str, ...] = DEFAULT_VARIANTS
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


def load_config(path: str | Path | None) -> ExperimentConfig:
    """The embedded default when `path` is None, else the TOML file's settings over the defaults."""
    if path is None:
        cfg = ExperimentConfig()
    else:
        cfg = build_dataclass(ExperimentConfig, read_toml(path), "")
    check_variant_names(list(cfg.variants))
    if not cfg.layers:
        raise UserError("no layers chosen", "Set layers = [...] in the config")
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML (None values, which TOML cannot hold, are left out)."""
    return dump_toml(cfg)
