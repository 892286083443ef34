"""SAELens SAEs: a folder (`cfg.json` + `sae_weights.safetensors`) or a release id and SAE id of its
pretrained registry (`saelens:RELEASE:SAE_ID`), resolved and downloaded by sae-lens itself.

SAELens's conventions become randsae's by exact rewrites (`imported.fold_*`): `apply_b_dec_to_input = False`,
an `expected_average_only_in` scaling factor (from the registry, or the `activation_scaler.json` a training
checkpoint keeps), `rescale_acts_by_decoder_norm` and a pre-6.0 `finetuning_scaling_factor`. Configs written
before SAELens 6 (flat `hook_name`, `activation_fn_str = "topk"`) are read too. A per-token normalization
(`layer_norm`, `constant_norm_rescale`) is no fixed rewrite of the weights and is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from randsae.errors import UserError
from randsae.interop.hook_names import residual_layer
from randsae.interop.imported import (
    ImportedSAE,
    SAEOrigin,
    as_float32,
    build_imported,
    fold_input_scaling,
    fold_latent_scale,
    fold_unsubtracted_input_bias,
)
from randsae.sae.base import SAELENS_INFERENCE, SAEConfig

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SCALER_FILE = "activation_scaler.json"
"""What a SAELens training checkpoint keeps of an `expected_average_only_in` normalization."""
PRETRAINED_PREFIX = "saelens:"
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "context_size",
    "prepend_bos",
    "dataset_path",
    "model_from_pretrained_kwargs",
)


def is_saelens_folder(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def read_saelens_folder(folder: Path) -> ImportedSAE:
    where = str(folder)
    cfg = _read_config(folder / CONFIG_FILE)
    scaling = None
    if (folder / SCALER_FILE).is_file():
        scaling = json.loads((folder / SCALER_FILE).read_text()).get("scaling_factor")
    tensors = load_file(folder / WEIGHTS_FILE)
    return from_saelens(cfg, tensors, "saelens", str(folder.resolve()), where, scaling)


def read_saelens_pretrained(source: str) -> ImportedSAE:
    """`saelens:RELEASE:SAE_ID` through sae-lens's registry (its download, cache and format converters)."""
    release, _, sae_id = source.removeprefix(PRETRAINED_PREFIX).partition(":")
    if not release or not sae_id:
        raise UserError(
            f"--sae {source} is not saelens:RELEASE:SAE_ID",
            "Write e.g. saelens:pythia-70m-deduped-res-sm:blocks.3.hook_resid_post",
        )
    try:
        from sae_lens import SAE
    except ImportError:
        raise UserError(
            f"reading {source} needs sae-lens, which is not installed", "pip install 'randsae[interop]'"
        ) from None
    try:
        sae, cfg, _ = SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id, device="cpu", dtype="float32")
    except ValueError as error:  # an unknown release or SAE id: sae-lens lists the valid ones
        raise UserError(f"sae-lens cannot resolve {source} ({error})", "Check the release and SAE id") from None
    except OSError as error:  # huggingface_hub's connection and not-found errors are OSErrors
        raise UserError(
            f"cannot fetch {source} from the Hugging Face Hub ({type(error).__name__})",
            "Connect to the Hub once (the files are cached), or download the SAE folder and pass its path",
        ) from None
    cfg = {**cfg, "normalize_activations": sae.cfg.normalize_activations}  # sae-lens folded the registry's factor
    return from_saelens(cfg, sae.state_dict(), "saelens_pretrained", source, source, None)


def from_saelens(
    cfg: dict[str, Any],
    tensors: dict[str, Tensor],
    fmt: str,
    source: str,
    where: str,
    scaling_factor: float | None,
) -> ImportedSAE:
    """An SAE from a SAELens config dict and state dict, its conventions rewritten into randsae's."""
    metadata = {**{key: cfg[key] for key in METADATA_KEYS if key in cfg}, **(cfg.get("metadata") or {})}
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if architecture == "standard" and activation == "topk":  # how SAELens before 6.0 wrote a TopK SAE
        architecture = "topk"
    conversions = []
    tensors = as_float32(dict(tensors))
    if cfg.get("reshape_activations", "none") != "none":
        raise UserError(
            f"{where} reads reshaped activations ({cfg['reshape_activations']}), not a residual stream",
            "Use an SAE of a residual stream (hook_resid_post)",
        )
    normalization = cfg.get("normalize_activations") or "none"
    if normalization == "expected_average_only_in":
        if scaling_factor is None:
            raise UserError(
                f"{where} was trained on scaled activations (expected_average_only_in) and no scaling "
                "factor is stored with it",
                f'Put the factor in {where}/{SCALER_FILE} as {{"scaling_factor": F}}, or read the SAE '
                "through the registry as saelens:RELEASE:SAE_ID",
            )
        tensors = fold_input_scaling(tensors, float(scaling_factor))
        conversions.append(f"input scaling factor {scaling_factor} folded into the weights")
    elif normalization != "none":
        raise UserError(
            f"{where} normalizes every token ({normalization}), which randsae's SAEs cannot",
            "Use an SAE trained without per-token normalization (normalize_activations = none)",
        )
    if "finetuning_scaling_factor" in tensors:
        tensors["W_dec"] = tensors["W_dec"] * tensors.pop("finetuning_scaling_factor").unsqueeze(1)
        conversions.append("finetuning scaling factor folded into W_dec")
    if cfg.get("rescale_acts_by_decoder_norm"):
        tensors = fold_latent_scale(tensors, tensors["W_dec"].norm(dim=1).clamp_min(1e-8))
        conversions.append("rescale_acts_by_decoder_norm folded (unit decoder rows)")
    if not cfg.get("apply_b_dec_to_input", True):
        if "b_enc" not in tensors:
            raise UserError(
                f"{where} ({architecture}) does not subtract b_dec from its input and has no b_enc to fold it into",
                "Use an SAE with apply_b_dec_to_input = true",
            )
        tensors = fold_unsubtracted_input_bias(tensors)
        conversions.append("apply_b_dec_to_input = false folded into b_enc")
    ours = SAELENS_INFERENCE.get(architecture, architecture)
    known = {field.name for field in dataclasses.fields(SAEConfig)} - {"architecture", "metadata"}
    fields = {name: cfg[name] for name in known if cfg.get(name) is not None}
    fields["k"] = k if ours == "topk" else fields.get("k")
    if ours in ("relu_l1", "gated") and fields.get("l1_coefficient") is None:
        fields["l1_coefficient"] = 0.0  # inference does not use it; the origin says it was not recorded
    try:
        sae_cfg = SAEConfig(architecture=ours, metadata=metadata, **fields)
    except TypeError as error:
        raise UserError(f"{where} has a damaged config ({error})", "Check its cfg.json") from None
    sae = build_imported(sae_cfg, tensors, where)
    hook = metadata.get("hook_name")
    recorded = {name: cfg[name] for name in ("k", "l1_coefficient") if cfg.get(name) is not None}
    recorded.update({key: metadata[key] for key in ("context_size", "dataset_path") if key in metadata})
    origin = SAEOrigin(
        format=fmt,
        source=source,
        model_name=metadata.get("model_name"),
        hook_name=hook,
        layer=residual_layer(hook) if hook else None,
        recorded=recorded,
        conversions=tuple(conversions),
    )
    return ImportedSAE(sae, origin)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"{path} is not JSON ({error})", "Check the file, or download it again") from None
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise UserError(f"{path} has no d_in and d_sae", "Point --sae to a SAELens SAE folder")
    return cfg
