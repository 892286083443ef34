"""An SAE trained elsewhere, read into randsae's form, and where it came from.

Every reader ends here: it turns the file's config into an `SAEConfig` and its tensors into randsae's four
(`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`, plus whatever else the
architecture registers, such as a JumpReLU `threshold`), rewriting the library's conventions exactly
(`fold_*`: the reconstruction of every input is unchanged), and `build_imported` loads them into the class
the architecture registry names, so an architecture added to `randsae.sae` is read by name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import randsae.sae  # noqa: F401  (registers every architecture)
from randsae.errors import UserError
from randsae.sae.base import SAEConfig, SparseAutoencoder, architecture_class, architecture_names


@dataclasses.dataclass(frozen=True)
class SAEOrigin:
    """Where an imported SAE came from: written beside it in a run directory, shown in the report."""

    format: str
    """`saelens`, `saelens_pretrained`, `sparsify` or `dictionary_learning`."""
    source: str
    """The folder (absolute) or `saelens:RELEASE:SAE_ID`."""
    model_name: str | None
    """The model the file says the SAE was trained on (None: it does not say)."""
    hook_name: str | None
    """The file's own name of the activations the SAE reads (`blocks.3.hook_resid_post`, `layers.3`...)."""
    layer: int | None
    """The block whose output (residual stream) that is, counted from 0; None when the hook is not one."""
    recorded: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Training settings the file records (k, l1_coefficient, context_size, dataset...)."""
    conversions: tuple[str, ...] = ()
    """The exact rewrites applied on reading (a folded scaling factor, normalized decoder rows...)."""

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "conversions": list(self.conversions)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SAEOrigin:
        return cls(**{**data, "conversions": tuple(data.get("conversions", ()))})

    def describe(self) -> str:
        """`sparsify checkpoint /path/layers.3 (model EleutherAI/pythia-70m, hook layers.3)`."""
        where = ", ".join(
            f"{name} {value}" for name, value in (("model", self.model_name), ("hook", self.hook_name)) if value
        )
        return f"{FORMAT_NAMES[self.format]} {self.source}" + (f" ({where})" if where else "")


FORMAT_NAMES = {
    "saelens": "SAELens folder",
    "saelens_pretrained": "SAELens pretrained SAE",
    "sparsify": "sparsify checkpoint",
    "dictionary_learning": "dictionary_learning checkpoint",
}


@dataclasses.dataclass(frozen=True)
class ImportedSAE:
    sae: SparseAutoencoder
    origin: SAEOrigin


def read_origin(path: Path) -> SAEOrigin:
    return SAEOrigin.from_json(json.loads(path.read_text()))


def build_imported(cfg: SAEConfig, tensors: dict[str, Tensor], where: str) -> SparseAutoencoder:
    """The registered architecture's SAE with `tensors` loaded (float32); `where` names the file in errors.

    Every tensor the class expects must be there with its shape, and no other: a missing or misshapen one
    is a UserError before any work."""
    if cfg.architecture not in architecture_names():
        raise UserError(
            f"{where} is a {cfg.architecture!r} SAE, an architecture randsae cannot evaluate",
            f"Use an SAE of one of the architectures {', '.join(architecture_names())}",
        )
    if cfg.d_in < 1 or cfg.d_sae < 1:
        raise UserError(f"{where} gives d_in={cfg.d_in}, d_sae={cfg.d_sae}", "Check that its config is complete")
    sae = architecture_class(cfg.architecture)(cfg)
    expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        problem = "; ".join(
            part
            for part in (
                f"lacks {', '.join(missing)}" if missing else "",
                f"has unexpected {', '.join(unexpected)}" if unexpected else "",
            )
            if part
        )
        raise UserError(
            f"the weights of {where} do not fit a {cfg.architecture} SAE: it {problem}",
            "Check that the weights file belongs to this config (and is complete)",
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise UserError(
                f"{name} in {where} has shape {list(tensors[name].shape)}, expected {list(shape)} "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae})",
                "Check that the weights file belongs to this config (and is complete)",
            )
    sae.load_state_dict({name: tensor.float() for name, tensor in tensors.items()})
    return sae.eval()


# Exact rewrites into randsae's convention: pre-activations are (x - b_dec) @ W_enc + b_enc, decoding is
# z @ W_dec + b_dec. Each leaves every input's latents' support and its reconstruction unchanged.


def fold_unsubtracted_input_bias(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """For an SAE whose encoder reads x itself (SAELens `apply_b_dec_to_input = False`): x @ W + b equals
    (x - b_dec) @ W + (b + b_dec @ W)."""
    W_enc, b_dec = tensors["W_enc"].double(), tensors["b_dec"].double()
    return {**tensors, "b_enc": (tensors["b_enc"].double() + b_dec @ W_enc).to(tensors["b_enc"].dtype)}


def fold_input_scaling(tensors: dict[str, Tensor], factor: float) -> dict[str, Tensor]:
    """For an SAE trained on activations times `factor` (SAELens `expected_average_only_in`): encode(f·x) and
    decode(z)/f become plain encode and decode (what SAELens's own `fold_activation_norm_scaling_factor` does)."""
    return {
        **tensors,
        "W_enc": tensors["W_enc"] * factor,
        "W_dec": tensors["W_dec"] / factor,
        "b_dec": tensors["b_dec"] / factor,
    }


def fold_latent_scale(tensors: dict[str, Tensor], scale: Tensor) -> dict[str, Tensor]:
    """For an SAE whose latent i is randsae's latent divided by `scale[i]` > 0 [d_sae] before its decoder row
    (SAELens `rescale_acts_by_decoder_norm`, dictionary_learning's decoder normalized on loading): its
    encoder column, encoder bias (and JumpReLU threshold) times scale[i], its decoder row divided by it. The
    activation grows by scale[i], the reconstruction is unchanged (ReLU commutes with a positive scale) and
    TopK ranks the scaled pre-activations, as those libraries do."""
    scaled = {
        **tensors,
        "W_enc": tensors["W_enc"] * scale,
        "b_enc": tensors["b_enc"] * scale,
        "W_dec": tensors["W_dec"] / scale.unsqueeze(1),
    }
    if "threshold" in tensors:
        scaled["threshold"] = tensors["threshold"] * scale
    return scaled


def as_float32(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}


def loaded_tensors(tensors: dict[str, Any], where: str) -> dict[str, Tensor]:
    """The tensors of a state dict read from a file; anything but tensors there is a UserError."""
    odd = [name for name, value in tensors.items() if not isinstance(value, torch.Tensor)]
    if odd:
        raise UserError(
            f"{where} holds {', '.join(odd)} that are not tensors", "Save the SAE's state_dict() only (tensors)"
        )
    return tensors
