"""An experiment as frozen dataclasses: read from TOML with strict keys, written back resolved.

Each section of the TOML file is one dataclass of the stage that uses it. Their defaults are the paper's
experiment (Heap et al.: Pythia-70m, all 6 layers, 100M tokens, TopK expansion 64, k 32), so
`ExperimentConfig()` is that experiment; a file, such as the embedded default `configs/default.toml`,
only says what differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from randsae.analysis.config import AnalysisConfig
from randsae.data.text import TextConfig
from randsae.data.tokens import TokenConfig
from randsae.errors import UserError
from randsae.interp.config import InterpConfig
from randsae.models.load import ModelConfig
from randsae.models.variants import VariantConfig, check_variant_names
from randsae.sae.trainer import TrainConfig
from randsae.toml_config import apply_overrides, build_dataclass, dump_toml, read_toml


def embedded_config_path() -> Path:
    """The embedded default experiment, what `randsae run` runs without --config."""
    return Path(str(resources.files("randsae") / "configs" / "default.toml"))


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

    ce_windows: int = 64
    """Held-out windows used for the CE-loss and KL scores (three or more model forwards each)."""
    batch_windows: int = 16
    """Windows per model forward (harvest and CE evaluation)."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Which model, variants and layers; the text; the SAEs; and how every stage runs."""

    layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    """Blocks whose output (the residual stream) gets an SAE, counted from 0."""
    variants: tuple[str, ...] = ("trained", "step0", "rerandomized", "rerandomized_keep_embeddings", "control")
    """Models compared: `trained`, `step0` (the Hub's initialization checkpoint), `rerandomized`,
    `rerandomized_keep_embeddings`, `control` (noise embeddings), `permuted`, `fresh_init`."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`..., `mps`."""
    seed: int = 0
    """Seed of SAE initialization and batch order."""
    activation_dtype: str = "bfloat16"
    """How harvested activations are stored: `float32`, `float16` or `bfloat16` (what the model computes
    in on CUDA)."""
    model: ModelConfig = ModelConfig()
    """The trained model, table `[model]`."""
    data: TextConfig = TextConfig()
    """The text, table `[data]`."""
    tokens: TokenConfig = TokenConfig()
    """Token windows and their train / held-out split, table `[tokens]`."""
    variant: VariantConfig = VariantConfig()
    """How the random variants are drawn, table `[variant]`."""
    sae: SAEShape = SAEShape()
    """SAE architecture and size, table `[sae]`."""
    train: TrainConfig = TrainConfig()
    """SAE training, table `[train]`."""
    eval: EvalConfig = EvalConfig()
    """Held-out evaluation, table `[eval]`."""
    interp: InterpConfig = InterpConfig()
    """Auto-interpretability, table `[interp]`."""
    analysis: AnalysisConfig = AnalysisConfig()
    """Trained-vs-random analysis, table `[analysis]`."""


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The TOML file (the embedded default when `path` is None) with `--set` `overrides` applied, over the
    paper's defaults."""
    data = apply_overrides(read_toml(path or embedded_config_path()), overrides)
    cfg = build_dataclass(ExperimentConfig, data)
    check_variant_names(list(cfg.variants))
    if not cfg.layers:
        raise UserError("no layers chosen", "Set layers = [...] in the config")
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML (None values, which TOML cannot hold, are left out)."""
    return dump_toml(cfg)
