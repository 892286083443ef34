"""EleutherAI sparsify checkpoints, read and written: `{hookpoint}/cfg.json` + `sae.safetensors`.

A sparsify SAE is TopK(ReLU(encoder(x - b_dec))) decoded as latents @ W_dec + b_dec, with `encoder.weight
[d_sae, d_in]`, `encoder.bias [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`: randsae's TopK SAE with
W_enc transposed. The folder's name is the hookpoint (the block module's path); its parent holds the
run's `config.json` (`model`, `ctx_len`, `dataset`) when sparsify's trainer wrote it. `multi_topk` changes
only the training loss (the decoder is also fitted at 4k), so such an SAE is read with its k and the
setting is recorded. delphi reads SAEs in this layout (`SparseCoder.load_many`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from randsae.atomic import save_safetensors_atomic, write_text_atomic
from randsae.errors import UserError
from randsae.interop.hook_names import residual_layer
from randsae.interop.imported import ImportedSAE, SAEOrigin, as_float32, build_imported
from randsae.run_dir import RunDir, SAEKey
from randsae.sae.base import SAEConfig, SparseAutoencoder, load_sae

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
RUN_CONFIG_FILE = "config.json"
"""sparsify's trainer config beside the hookpoint folders."""


def is_sparsify_folder(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def sparsify_hookpoints(folder: Path) -> list[str]:
    """The hookpoint folders of a sparsify checkpoint root (several SAEs, one per hookpoint)."""
    return sorted(child.name for child in folder.iterdir() if child.is_dir() and is_sparsify_folder(child))


def read_sparsify(folder: Path) -> ImportedSAE:
    where = str(folder)
    try:
        cfg: dict[str, Any] = json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as error:
        raise UserError(f"{folder / CONFIG_FILE} is not JSON ({error})", "Check the file") from None
    if cfg.get("activation", "topk") != "topk" or cfg.get("transcode") or cfg.get("skip_connection"):
        raise UserError(
            f"{where} is not a plain TopK SAE (activation {cfg.get('activation')!r}, transcode "
            f"{cfg.get('transcode', False)}, skip_connection {cfg.get('skip_connection', False)})",
            "Use a sparsify SAE trained with activation = topk, without transcode or skip_connection",
        )
    if "d_in" not in cfg or "k" not in cfg:
        raise UserError(f"{folder / CONFIG_FILE} has no d_in or k", "Point --sae to a sparsify hookpoint folder")
    d_in = int(cfg["d_in"])
    d_sae = int(cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32)))
    run_cfg = _run_config(folder.parent)
    hook = folder.name
    metadata = {"model_name": run_cfg.get("model"), "hook_name": hook, "context_size": run_cfg.get("ctx_len")}
    metadata = {key: value for key, value in metadata.items() if value is not None}
    tensors = as_float32(load_file(folder / WEIGHTS_FILE))
    renamed = {"encoder.weight": "W_enc", "encoder.bias": "b_enc"}
    tensors = {renamed.get(name, name): tensor for name, tensor in tensors.items()}
    if "W_enc" in tensors:
        tensors["W_enc"] = tensors["W_enc"].T.contiguous()
    sae = build_imported(SAEConfig("topk", d_in, d_sae, k=int(cfg["k"]), metadata=metadata), tensors, where)
    recorded = {"k": int(cfg["k"]), "multi_topk": bool(cfg.get("multi_topk", False))}
    recorded.update({key: run_cfg[key] for key in ("dataset", "ctx_len") if key in run_cfg})
    origin = SAEOrigin(
        format="sparsify",
        source=str(folder.resolve()),
        model_name=run_cfg.get("model"),
        hook_name=hook,
        layer=residual_layer(hook),
        recorded=recorded,
    )
    return ImportedSAE(sae, origin)


def write_sparsify(sae: SparseAutoencoder, folder: Path) -> None:
    """`sae` (TopK) as a sparsify hookpoint folder, each file written atomically."""
    if sae.cfg.architecture != "topk" or sae.cfg.k is None:
        raise UserError(
            f"sparsify holds TopK SAEs only, not {sae.cfg.architecture}",
            "Use --format saelens for this architecture",
        )
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "encoder.weight": sae.W_enc.detach().T.contiguous().cpu(),
        "encoder.bias": sae.b_enc.detach().contiguous().cpu(),
        "W_dec": sae.W_dec.detach().contiguous().cpu(),
        "b_dec": sae.b_dec.detach().contiguous().cpu(),
    }
    save_safetensors_atomic(folder / WEIGHTS_FILE, tensors)
    cfg = {
        "activation": "topk",
        "expansion_factor": sae.cfg.d_sae // sae.cfg.d_in,
        "normalize_decoder": True,
        "num_latents": sae.cfg.d_sae,
        "k": sae.cfg.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": sae.cfg.d_in,
    }
    write_text_atomic(folder / CONFIG_FILE, json.dumps(cfg, indent=2))


def _run_config(root: Path) -> dict[str, Any]:
    path = root / RUN_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}  # another program's file of that name: the SAE's own cfg.json is what matters
    return data if isinstance(data, dict) else {}


def write_run_sparsify(run: RunDir, keys: Sequence[SAEKey]) -> list[Path]:
    """Every SAE of `keys` in the run also in sparsify's layout (`RunDir.sparsify_sae`, named by its hook);
    returns the folders. Rewritten each time: a retrained SAE replaces its export."""
    folders = []
    for key in keys:
        sae = load_sae(run.sae(key))
        folder = run.sparsify_sae(key, sae.cfg.metadata.get("hook_name") or f"layer{key.layer}")
        write_sparsify(sae, folder)
        folders.append(folder)
    return folders
