"""dictionary_learning (Marks et al.) checkpoints: `ae.pt`, a state dict, beside `config.json`.

`ae.pt` is read with `torch.load(weights_only=True)`: tensors only, never an arbitrary pickled object. The
layouts (dictionary_learning/dictionary.py and trainers/top_k.py):

- `AutoEncoder` (ReLU): `encoder.weight [d_sae, d_in]`, `encoder.bias`, `decoder.weight [d_in, d_sae]`,
  `bias [d_in]`; encode ReLU(encoder(x - bias)), decode decoder(f) + bias. Its `from_pretrained` makes the
  decoder columns unit-norm, scaling the latents (encoder rows and bias) to keep the output: done here too.
- `AutoEncoderTopK`: `encoder.*`, `decoder.weight`, `b_dec [d_in]` (and buffers `k`, `threshold`);
  encode TopK(ReLU(encoder(x - b_dec))), decode decoder(f) + b_dec.

`config.json`'s `trainer` table names the class (`dict_class`), `k`, the model (`lm_name`), and the
activations (`submodule_name`, e.g. `resid_post_layer_3`).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from randsae.errors import UserError
from randsae.interop.hook_names import residual_layer
from randsae.interop.imported import (
    ImportedSAE,
    SAEOrigin,
    as_float32,
    build_imported,
    fold_latent_scale,
    loaded_tensors,
)
from randsae.sae.base import SAEConfig

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"
CLASSES = {"AutoEncoder": "relu_l1", "AutoEncoderTopK": "topk"}
"""dictionary_learning's classes read here -> randsae's architectures."""


def is_dictionary_learning_folder(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file()


def read_dictionary_learning(folder: Path) -> ImportedSAE:
    where = str(folder / WEIGHTS_FILE)
    trainer = _trainer_config(folder)
    state = _load_state_dict(folder / WEIGHTS_FILE)
    dict_class = trainer.get("dict_class") or ("AutoEncoder" if "bias" in state else "AutoEncoderTopK")
    if dict_class not in CLASSES:
        raise UserError(
            f"{where} is a {dict_class}, which randsae does not read",
            f"Use one of {', '.join(CLASSES)}, or convert it to a SAELens folder",
        )
    architecture = CLASSES[dict_class]
    bias_name = "bias" if architecture == "relu_l1" else "b_dec"
    needed = ("encoder.weight", "encoder.bias", "decoder.weight", bias_name)
    missing = [name for name in needed if name not in state]
    if missing:
        raise UserError(
            f"{where} lacks {', '.join(missing)} of a dictionary_learning {dict_class}",
            "Check that the file is complete (it is the ae.pt that training wrote)",
        )
    tensors = {
        "W_enc": state["encoder.weight"].T.contiguous(),
        "b_enc": state["encoder.bias"],
        "W_dec": state["decoder.weight"].T.contiguous(),
        "b_dec": state[bias_name],
    }
    conversions = []
    k = None
    if architecture == "topk":
        k = int(state["k"]) if "k" in state else trainer.get("k")
        if k is None:
            raise UserError(f"{where} records no k", f"Put the trainer's config.json (with k) beside {WEIGHTS_FILE}")
    else:
        norms = tensors["W_dec"].norm(dim=1).clamp_min(1e-8)
        tensors = fold_latent_scale(tensors, norms)
        conversions.append("decoder rows made unit-norm, as dictionary_learning's from_pretrained does")
    d_sae, d_in = state["encoder.weight"].shape
    hook = trainer.get("submodule_name")
    metadata = {"model_name": trainer.get("lm_name"), "hook_name": hook}
    metadata = {key: value for key, value in metadata.items() if value is not None}
    cfg = SAEConfig(
        architecture,
        int(d_in),
        int(d_sae),
        k=k,
        l1_coefficient=trainer.get("l1_penalty", 0.0) if architecture == "relu_l1" else None,
        metadata=metadata,
    )
    sae = build_imported(cfg, as_float32(tensors), where)
    recorded: dict[str, Any] = {
        name: trainer[name] for name in ("k", "l1_penalty", "steps", "layer") if name in trainer
    }
    origin = SAEOrigin(
        format="dictionary_learning",
        source=str(folder.resolve()),
        model_name=trainer.get("lm_name"),
        hook_name=hook,
        layer=residual_layer(hook) if hook else None,
        recorded=recorded,
        conversions=tuple(conversions),
    )
    return ImportedSAE(sae, origin)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} holds pickled Python objects, not a state dict of tensors (randsae never unpickles them)",
            "Save the SAE with torch.save(ae.state_dict(), 'ae.pt')",
        ) from None
    except (RuntimeError, EOFError) as error:
        raise UserError(f"{path} is not a readable torch file ({error})", "Check the file, or copy it again") from None
    if not isinstance(state, dict):
        raise UserError(
            f"{path} holds a {type(state).__name__}, not a state dict",
            "Save the SAE with torch.save(ae.state_dict(), 'ae.pt')",
        )
    return loaded_tensors(state, str(path))


def _trainer_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"{path} is not JSON ({error})", "Check the file, or remove it") from None
    trainer = data.get("trainer") if isinstance(data, dict) else None
    return trainer if isinstance(trainer, dict) else {}
