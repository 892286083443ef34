"""Model variants: the trained model and the random controls the paper compares it with.

Every variant but `step0` is built from the trained weights already in memory, deterministically from a
seed. Parameters are visited in `named_parameters()` order (tied weights once), as in the paper's code.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from randsae.errors import UserError
from randsae.models.hookpoints import is_norm
from randsae.toml_config import invalid

VARIANTS = ("trained", "step0", "rerandomized", "rerandomized_keep_embeddings", "control", "permuted", "fresh_init")
"""Every variant, in the order tables, plots and palettes list them."""
PAPER_VARIANTS = ("trained", "step0", "rerandomized", "rerandomized_keep_embeddings", "control")
"""The variants Heap et al. compare: what a run compares unless its config says otherwise."""


def is_drawn(variant: str) -> bool:
    """Whether the variant is a random draw made from `variant.seed` (all but `trained` and `step0`), so
    that replicates draw it again."""
    return variant not in ("trained", "step0")


def predicts_language(variant: str) -> bool:
    """Whether the variant's next-token predictions are a language model's: only `trained`'s. Every other
    variant's weights or embeddings are random (the control's embeddings are fresh noise), so CE-loss and KL
    scores with an SAE spliced in mean nothing there."""
    return variant == "trained"


@dataclasses.dataclass(frozen=True)
class VariantConfig:
    """How the random variants are drawn."""

    seed: int = 42
    """Seed of every random draw (the paper's: 42)."""
    rerandomize_norms: bool = False
    """Also re-randomize LayerNorm/RMSNorm parameters (the paper's final config keeps them trained)."""
    init_scale: float = 1.0
    """Multiplies each random tensor's spread about its mean (rerandomized, permuted, fresh_init)."""

    def __post_init__(self) -> None:
        if not self.init_scale > 0:
            raise invalid("variant.init_scale", self.init_scale, "a positive number (1: the tensors' own spread)")


def check_variant_names(names: list[str]) -> None:
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}", f"Choose from {', '.join(VARIANTS)}")


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters owned by normalization layers, found by module type (`hookpoints.is_norm`):
    LayerNorm, each family's RMSNorm, Mamba2's gated RMSNorm, xLSTM's multi-head LayerNorm."""
    return {
        f"{module_name}.{param_name}" if module_name else param_name
        for module_name, module in model.named_modules()
        if is_norm(module)
        for param_name, _ in module.named_parameters(recurse=False)
    }


def rerandomize_tensor(tensor: Tensor, generator: torch.Generator, scale: float = 1.0) -> Tensor:
    """I.i.d. Gaussian with the tensor's own scalar mean and std (std 0 for a single entry)."""
    flat = tensor.detach().float()
    std = flat.std() if flat.numel() > 1 else flat.new_zeros(())
    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
    return (flat.mean() + scale * std * noise.to(flat.device)).to(tensor.dtype)


def permute_tensor(tensor: Tensor, generator: torch.Generator, scale: float = 1.0) -> Tensor:
    """The tensor's own entries in a random order (keeps its exact value distribution)."""
    flat = tensor.detach().flatten()
    shuffled = flat[torch.randperm(flat.numel(), generator=generator).to(flat.device)]
    if scale == 1.0:  # exactly the same values, not values rounded through a rescaling
        return shuffled.view_as(tensor)
    mean = shuffled.float().mean()
    return (mean + scale * (shuffled.float() - mean)).to(tensor.dtype).view_as(tensor)


@torch.no_grad()
def _redraw_parameters(
    model: nn.Module,
    draw: Callable[[Tensor, torch.Generator, float], Tensor],
    cfg: VariantConfig,
    keep: Callable[[str], bool],
) -> None:
    generator = torch.Generator().manual_seed(cfg.seed)
    norms = set() if cfg.rerandomize_norms else norm_parameter_names(model)
    for name, param in model.named_parameters():
        if name in norms or keep(name):
            continue
        param.copy_(draw(param, generator, cfg.init_scale))


class NoiseEmbedding(nn.Module):
    """Input embedding replaced by fresh N(0, 1) noise for every token on every forward (the paper's
    control: a token has no consistent embedding, so auto-interp should be at chance)."""

    def __init__(self, d_model: int, dtype: torch.dtype, seed: int):
        super().__init__()
        self.d_model = d_model
        self.dtype = dtype
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Repeat a noise sequence (so clean and patched forwards of one batch see the same noise)."""
        self.generator.manual_seed(seed)

    def forward(self, input_ids: Tensor) -> Tensor:
        noise = torch.randn(*input_ids.shape, self.d_model, generator=self.generator)
        return noise.to(device=input_ids.device, dtype=self.dtype)


def build_variant(
    trained: PreTrainedModel, name: str, cfg: VariantConfig, load_step0: Callable[[], PreTrainedModel] | None = None
) -> PreTrainedModel:
    """A new model for variant `name`; the trained model is left untouched."""
    check_variant_names([name])
    if name == "trained":
        return trained
    if name == "step0":
        if load_step0 is None:
            raise UserError(
                "the step0 variant needs a Hub model with an initialization checkpoint",
                "Use a hub id such as EleutherAI/pythia-70m, or use fresh_init instead",
            )
        return load_step0()
    if name == "fresh_init":
        return _fresh_init(trained, cfg)
    model = copy.deepcopy(trained)
    if name == "control":
        weight = cast(Tensor, model.get_input_embeddings().weight)
        model.set_input_embeddings(NoiseEmbedding(weight.shape[1], weight.dtype, cfg.seed))
    elif name == "permuted":
        _redraw_parameters(model, permute_tensor, cfg, keep=lambda _: False)
    else:
        kept = embedding_parameter_names(model) if name == "rerandomized_keep_embeddings" else set()
        _redraw_parameters(model, rerandomize_tensor, cfg, keep=kept.__contains__)
    return model


def embedding_parameter_names(model: PreTrainedModel) -> set[str]:
    """Parameters named like "embed" plus the input and output embedding modules' own, since
    transformers 5 calls Pythia's `embed_out` `lm_head`."""
    modules = [model.get_input_embeddings(), model.get_output_embeddings()]
    owned = {id(param) for module in modules if module is not None for param in module.parameters()}
    return {name for name, param in model.named_parameters() if "embed" in name.lower() or id(param) in owned}


def _fresh_init(trained: PreTrainedModel, cfg: VariantConfig) -> PreTrainedModel:
    """The architecture's own initialization from its config (a step-0 stand-in for any model)."""
    torch.manual_seed(cfg.seed)
    param = next(trained.parameters())
    model = AutoModelForCausalLM.from_config(trained.config, dtype=param.dtype).to(param.device).eval()
    if cfg.init_scale != 1.0:
        norms = norm_parameter_names(model)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname not in norms:
                    p.copy_(p.mean() + cfg.init_scale * (p - p.mean()))
    return model
