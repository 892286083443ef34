"""`randsae compare`: the random-model control for SAEs trained elsewhere.

The imported SAEs become the `trained` SAEs of an ordinary run directory (their origin recorded beside
them in place of a training log); the experiment is the user's config with what the SAEs themselves fix
taken from them: the layers their hooks read, the model their files name (unless the config names one), the
architecture, width and k. `run_pipeline` then harvests, trains SAEs of that shape on
the random variants, and evaluates everything as in `randsae run`; the later stages follow unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from randsae.atomic import write_text_atomic
from randsae.config import ExperimentConfig, embedded_config_path
from randsae.errors import UserError
from randsae.experiment import check_resume, check_writable
from randsae.interop.imported import ImportedSAE, read_origin
from randsae.interop.read import read_sae
from randsae.models.hookpoints import check_layers, find_blocks, hook_name
from randsae.models.load import LoadedModel, is_hub_id
from randsae.run_dir import SAE_ORIGIN_FILE, RunDir, SAEKey
from randsae.sae.base import SAEConfig, load_sae
from randsae.toml_config import apply_overrides, build_dataclass, read_toml

IMPORT_TABLE = "imported_sae"
"""`[[imported_sae]]` entries (each `path = "..."`) in a compare config: SAEs added to those of --sae. (Not
`[[sae]]`: that name is the `[sae]` table of every config.)"""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What `randsae compare` runs: the experiment and the imported SAEs, in the order of its layers."""

    cfg: ExperimentConfig
    imported: tuple[ImportedSAE, ...]


def plan_comparison(config: str | Path | None, overrides: Sequence[str], sources: Sequence[str]) -> Comparison:
    """Read every SAE and derive the experiment from them and the config: all before any model is loaded."""
    data = apply_overrides(read_toml(config or embedded_config_path()), overrides)
    entries = data.pop(IMPORT_TABLE, [])
    if not isinstance(entries, list) or not all(_is_entry(entry) for entry in entries):
        raise UserError(
            f'[[{IMPORT_TABLE}]] entries must each be a table with path = "..." (and optionally layer = N)',
            f'Write [[{IMPORT_TABLE}]] then path = "folder or saelens:RELEASE:SAE_ID" per SAE',
        )
    wanted = [(source, None) for source in sources] + [(entry["path"], entry.get("layer")) for entry in entries]
    if not wanted:
        raise UserError("no SAE to compare", f"Pass --sae PATH (repeatable) or [[{IMPORT_TABLE}]] entries in --config")
    imported = [_with_layer(read_sae(source), layer) for source, layer in wanted]
    first = imported[0].sae.cfg
    for item in imported:
        origin, shape = item.origin, item.sae.cfg
        if origin.layer is None:
            hook = origin.hook_name or "no hook point"
            raise UserError(
                f"{origin.describe()} reads {hook}, which randsae does not know as the residual stream after a block",
                f'Compare a residual-stream SAE; if it is one, list it as [[{IMPORT_TABLE}]] path = "..." with '
                "layer = the block whose output it reads",
            )
        if (shape.architecture, shape.d_in, shape.d_sae, shape.k) != (
            first.architecture,
            first.d_in,
            first.d_sae,
            first.k,
        ):
            raise UserError(
                f"{origin.source} is a {_shape(shape)} SAE and {imported[0].origin.source} a {_shape(first)} one",
                "Compare SAEs of one architecture, width and k per run (one --out each)",
            )
    layers = [item.origin.layer for item in imported]
    if len(set(layers)) < len(layers):
        raise UserError(f"two of the SAEs read layer {_repeated(layers)}", "Pass one SAE per layer")
    if first.d_sae % first.d_in:
        raise UserError(
            f"the SAEs have d_sae = {first.d_sae}, not a multiple of d_in = {first.d_in}",
            "Compare an SAE whose width is a whole number of times its input's",
        )
    data["layers"] = sorted(layer for layer in layers if layer is not None)
    user = _user_keys(config, overrides)
    if "model.name" not in user:
        data.setdefault("model", {})["name"] = _model_name(imported)
    # One SAE per layer, which cannot be retrained with a second seed: the embedded default's replicates and
    # seed-stability retraining give way; a user's own config asking for them is refused below.
    if "replicates.sae_seeds" not in user:
        data.setdefault("replicates", {})["sae_seeds"] = 1
    if "analysis.seed_stability" not in user:
        data.setdefault("analysis", {})["seed_stability"] = False
    sae_table = data.setdefault("sae", {})
    sae_table.update(architecture=first.architecture, expansion=first.d_sae // first.d_in)
    if first.k is not None:
        sae_table["k"] = first.k
    # A ReLU SAE's penalty stays the config's `sae.l1_coefficient`: each library scales it its own way (SAELens
    # sums the squared error over d_in and weights the L1 by decoder norms, randsae takes means), so a number
    # carried over would not mean the same sparsity. The report's L0 column shows whether the sparsities match.
    cfg = build_dataclass(ExperimentConfig, data)
    if "trained" not in cfg.variants or not any(variant != "trained" for variant in cfg.variants):
        raise UserError(
            f"variants = {list(cfg.variants)} has no trained model or no random variant to compare with",
            "List trained and at least one random variant, e.g. variants = ['trained', 'rerandomized']",
        )
    if cfg.replicates.sae_seeds != 1:
        raise UserError(
            f"replicates.sae_seeds = {cfg.replicates.sae_seeds}, but each imported SAE is one SAE",
            "Set replicates.sae_seeds = 1 for a comparison",
        )
    if cfg.analysis.seed_stability:
        raise UserError(
            "analysis.seed_stability retrains the trained SAE with a second seed, which an imported SAE cannot",
            "Set analysis.seed_stability = false for a comparison",
        )
    by_layer = sorted(imported, key=lambda item: item.origin.layer or 0)
    return Comparison(cfg, tuple(by_layer))


def install_imported(comparison: Comparison, run: RunDir, lm: LoadedModel) -> None:
    """Check the SAEs against the loaded model, then write each as the run's `trained` SAE of its layer with
    its origin (kept as it is on a rerun of the same comparison)."""
    cfg = comparison.cfg
    blocks_path, blocks = find_blocks(lm.model, cfg.model.blocks)
    check_layers(cfg.layers, len(blocks))
    d_model = lm.model.config.hidden_size
    for item in comparison.imported:
        if item.sae.cfg.d_in != d_model:
            raise UserError(
                f"{item.origin.describe()} reads d_in = {item.sae.cfg.d_in} but {lm.display_name}'s residual "
                f"stream has {d_model}",
                "Compare the SAE on the model it was trained on (set model.name)",
            )
    check_writable(run.root)
    check_resume(cfg, run)
    for item in comparison.imported:
        layer = item.origin.layer
        assert layer is not None  # plan_comparison refused the others
        folder = run.sae(SAEKey("trained", layer))
        origin_file = folder / SAE_ORIGIN_FILE
        if (
            origin_file.is_file()
            and read_origin(origin_file).source == item.origin.source
            and _same_weights(item, folder)
        ):
            continue  # a rerun of this comparison: its SAE's metrics and everything after stay valid
        if folder.exists():
            raise UserError(
                f"{run.root} already holds another trained SAE for layer {layer} (or {item.origin.source} "
                "changed since it was read)",
                "Use a new --out for this comparison",
            )
        metadata = {
            **item.sae.cfg.metadata,
            "model_name": lm.display_name,
            "hook_name": hook_name(blocks_path, layer),
            "variant": "trained",
            "layer": layer,
            "context_size": cfg.tokens.context_size,
        }
        sae = item.sae
        sae.cfg = dataclasses.replace(sae.cfg, metadata=metadata)
        sae.save(folder)
        write_text_atomic(origin_file, json.dumps(item.origin.to_json(), indent=2))


def _is_entry(entry: Any) -> bool:
    """An [[imported_sae]] table: `path` (str) and optionally `layer` (int >= 0), nothing else."""
    if not isinstance(entry, dict) or set(entry) - {"path", "layer"} or not isinstance(entry.get("path"), str):
        return False
    layer = entry.get("layer", 0)
    return type(layer) is int and layer >= 0


def _with_layer(item: ImportedSAE, layer: int | None) -> ImportedSAE:
    """The SAE with the layer its [[imported_sae]] entry gives (None: its hook's own)."""
    return item if layer is None else ImportedSAE(item.sae, dataclasses.replace(item.origin, layer=layer))


def _same_weights(item: ImportedSAE, folder: Path) -> bool:
    stored = load_sae(folder).state_dict()
    return all(torch.equal(stored[name], tensor.cpu()) for name, tensor in item.sae.state_dict().items())


def _user_keys(config: str | Path | None, overrides: Sequence[str]) -> set[str]:
    """The `section.key`s the user's own config file or --set gives (the embedded default's do not count)."""
    keys = {assignment.split("=", 1)[0].strip() for assignment in overrides}
    if config is not None:
        for section, table in read_toml(config).items():
            keys |= {f"{section}.{key}" for key in table} if isinstance(table, dict) else {section}
    return keys


def _model_name(imported: Sequence[ImportedSAE]) -> str:
    names = {item.origin.model_name for item in imported}
    first = imported[0].origin
    if len(names) > 1:
        raise UserError(f"the SAEs name different models ({', '.join(map(str, names))})", "Compare one model's SAEs")
    name = first.model_name
    if name is None:
        raise UserError(
            f"{first.describe()} does not say which model it was trained on",
            "Name it in the config ([model] name = ...) or with --set model.name=HUB_ID_OR_FOLDER",
        )
    if "/" not in name and not Path(name).exists():
        name = _official_name(name)
    if not is_hub_id(name) and not Path(name).exists():
        raise UserError(
            f"{first.describe()} names its model {name!r}, which is neither a Hugging Face id nor a folder",
            "Set the model's Hub id or folder with --set model.name=...",
        )
    return name


def _official_name(name: str) -> str:
    """The Hub id of a TransformerLens model name (`pythia-70m-deduped`), what SAELens configs record, from
    TransformerLens's own table where it is installed (with sae-lens); the name itself otherwise."""
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:
        return name
    try:
        return str(get_official_model_name(name))
    except ValueError:
        return name


def _shape(cfg: SAEConfig) -> str:
    k = f", k {cfg.k}" if cfg.k is not None else ""
    return f"{cfg.architecture} (d_in {cfg.d_in}, d_sae {cfg.d_sae}{k})"


def _repeated(values: list[Any]) -> Any:
    return next(value for value in values if values.count(value) > 1)
