"""An experiment as frozen dataclasses: read from TOML with strict keys, checked whole, written back resolved.

Each section of the TOML file is one dataclass of the stage that uses it. Their defaults are the paper's
experiment (Heap et al.: Pythia-70m, all 6 layers, 100M tokens, TopK expansion 64, k 32), so
`ExperimentConfig()` is that experiment; a file, such as the embedded default `configs/default.toml`,
only says what differs. Every dataclass checks its own values when it is built and `ExperimentConfig`
checks the sections against each other, so a loaded config can run: a mistake is a one-line error naming
the key before any work starts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from randsae.analysis.config import AnalysisConfig
from randsae.data.activations import DTYPES
from randsae.data.text import TextConfig
from randsae.data.tokens import TokenConfig
from randsae.interp.config import InterpConfig
from randsae.models.load import ModelConfig, is_hub_id
from randsae.models.variants import VARIANTS, VariantConfig
from randsae.sae.base import architecture_names
from randsae.sae.trainer import TrainConfig
from randsae.toml_config import apply_overrides, build_dataclass, dump_toml, invalid, read_toml

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


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

    def __post_init__(self) -> None:
        if self.architecture not in architecture_names():
            raise invalid("sae.architecture", self.architecture, f"one of {', '.join(architecture_names())}")
        for name in ("expansion", "k"):
            if getattr(self, name) < 1:
                raise invalid(f"sae.{name}", getattr(self, name), "an integer of at least 1")
        if not self.l1_coefficient >= 0:
            raise invalid("sae.l1_coefficient", self.l1_coefficient, "a number of at least 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of every SAE."""

    ce_windows: int = 64
    """Held-out windows used for the CE-loss and KL scores (three or more model forwards each)."""
    batch_windows: int = 16
    """Windows per model forward (harvest and CE evaluation)."""

    def __post_init__(self) -> None:
        for name in ("ce_windows", "batch_windows"):
            if getattr(self, name) < 1:
                raise invalid(f"eval.{name}", getattr(self, name), "an integer of at least 1")


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

    def __post_init__(self) -> None:
        if not self.layers or len(set(self.layers)) < len(self.layers) or min(self.layers) < 0:
            raise invalid("layers", self.layers, "a non-empty list of distinct block indices (0, 1, ...)")
        if not self.variants or len(set(self.variants)) < len(self.variants) or set(self.variants) - set(VARIANTS):
            raise invalid("variants", self.variants, f"a non-empty list of distinct names out of {', '.join(VARIANTS)}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise invalid("device", self.device, "auto, cpu, cuda, cuda:N or mps")
        if self.activation_dtype not in DTYPES:
            raise invalid("activation_dtype", self.activation_dtype, f"one of {', '.join(DTYPES)}")
        self._check_sections_agree()

    def _check_sections_agree(self) -> None:
        context = self.tokens.context_size
        if "step0" in self.variants and not is_hub_id(self.model.name):
            raise invalid("variants", self.variants, f"a list without step0: model.name = {self.model.name!r} has no "
                          "Hub initialization checkpoint (fresh_init is the step-0 analogue)")
        if self.train.context_size is not None:
            raise invalid("train.context_size", self.train.context_size, "nothing: it is tokens.context_size")
        if self.eval.ce_windows > self.tokens.heldout_tokens // context:
            raise invalid("eval.ce_windows", self.eval.ce_windows,
                          f"at most the {self.tokens.heldout_tokens // context} held-out windows "
                          "(tokens.heldout_tokens / tokens.context_size)")
        if context % self.interp.window_size:
            raise invalid("interp.window_size", self.interp.window_size,
                          f"a divisor of tokens.context_size = {context}")
        if self.analysis.seed_stability and self.analysis.stability_seed == self.seed:
            raise invalid("analysis.stability_seed", self.analysis.stability_seed,
                          f"a seed other than seed = {self.seed}, which trained the first SAEs")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The TOML file (the embedded default when `path` is None) with `--set` `overrides` applied, over the
    paper's defaults, checked whole."""
    data = apply_overrides(read_toml(path or embedded_config_path()), overrides)
    return build_dataclass(ExperimentConfig, data)


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML (None values, which TOML cannot hold, are left out)."""
    return dump_toml(cfg)
