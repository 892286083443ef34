"""Several models in one experiment (the paper's size sweep): `[[models]]` entries, each run as its own
single-model run under `RUN/models/{label}/`.

A sweep config is an experiment config whose `models` list replaces `[model]`: every key but the models is
shared, `layers` may be fractions of depth (resolved per model once its block count is known), and an entry
may set keys of its own. Each model's part of the run is an ordinary run directory made by `run_pipeline`
(so it resumes, plans and checks its config exactly as a single-model run does); one model's failure is
recorded in `RUN/models.json` and the others go on. The report reads every model's part (report/sweep.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from randsae.atomic import write_json_atomic, write_text_atomic
from randsae.config import ExperimentConfig, embedded_config_path, is_shape_sweep
from randsae.errors import UserError, user_error_for
from randsae.experiment import check_writable, resolve_device, run_pipeline, show_plan
from randsae.models.hookpoints import find_blocks
from randsae.models.load import EMBEDDED_MODELS, LoadedModel, ModelConfig, display_name, load_model
from randsae.plan import human_bytes, human_seconds, total_disk
from randsae.records import from_plain
from randsae.run_dir import RunDir, read_json
from randsae.sae_sweep import ShapeSweep, build_shape_sweep
from randsae.toml_config import apply_overrides, build_dataclass, dump_toml, invalid, read_toml

LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A model's label names its folder: letters, digits, `.`, `_` and `-`."""


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One `[[models]]` entry, besides the `[model]` keys it holds (`name`, `revision`, `blocks`, ...)."""

    label: str | None = None
    """The model's folder under `models/` and its name in the report; default: the model's name without its
    organization or `.gguf` (`pythia-70m`), plus `-{revision}` when it has one."""
    layers: tuple[int | float, ...] | None = None
    """This model's layers, instead of the top-level `layers`: block indices, or fractions of depth."""
    set: tuple[str, ...] = ()
    """Other keys this model sets differently, as `randsae run --set` takes them (`["eval.batch_windows=4"]`)."""


@dataclasses.dataclass(frozen=True)
class SweepModel:
    """One model of a sweep: its label and its experiment, whose layers may still be fractions of depth."""

    label: str
    config: ExperimentConfig
    """Checked whole; with `fractions`, its `layers` are a placeholder until `resolve`."""
    fractions: tuple[float, ...] | None
    """The layers as fractions of depth in (0, 1]; None when they are block indices."""

    def resolve(self, n_blocks: int) -> ExperimentConfig:
        """This model's experiment with its layers as block indices (`depth_layers`)."""
        if self.fractions is None:
            return self.config
        return dataclasses.replace(self.config, layers=depth_layers(self.fractions, n_blocks))


@dataclasses.dataclass(frozen=True)
class Sweep:
    models: tuple[SweepModel, ...]
    toml: str
    """The sweep config as given (after `--set`), written to RUN/config.toml: rerunnable with --config."""


def depth_layers(fractions: Sequence[float], n_blocks: int) -> tuple[int, ...]:
    """The block whose output lies nearest each fraction of depth (block i's output is at depth (i + 1) / n,
    ties rounded up; at least block 0), repeats dropped: 0.5 of 6 blocks is block 2, 1.0 the last."""
    indices = (max(1, math.floor(fraction * n_blocks + 0.5 + 1e-9)) - 1 for fraction in fractions)
    return tuple(dict.fromkeys(indices))


def is_sweep(data: dict[str, Any]) -> bool:
    return "models" in data


def load_experiment(
    path: str | Path | None = None, overrides: Sequence[str] = ()
) -> ExperimentConfig | Sweep | ShapeSweep:
    """A config file (the embedded default when None) with `--set` overrides: a `Sweep` when it lists `models`,
    a `ShapeSweep` when `[sae]` keys are lists, else the one-model, one-shape `ExperimentConfig`."""
    data = apply_overrides(read_toml(path or embedded_config_path()), overrides)
    if is_sweep(data):
        return build_sweep(data)
    return build_shape_sweep(data) if is_shape_sweep(data) else build_dataclass(ExperimentConfig, data)


def build_sweep(data: dict[str, Any]) -> Sweep:
    """Check a sweep config whole, every model's experiment included, before any work."""
    shared = {key: value for key, value in data.items() if key != "models"}
    if "model" in shared:
        raise UserError("the config has both [model] and models", "Keep one: [[models]] entries for several models")
    if is_shape_sweep(shared):
        raise UserError(
            "list-valued [sae] keys (a sweep over SAE shapes) are not taken with [[models]]",
            "Give each [sae] key one value here, or sweep the shapes in a config of one model",
        )
    entries = data["models"]
    if not isinstance(entries, list) or not entries:
        raise invalid("models", entries, 'a non-empty list of [[models]] tables (or of names: ["embedded", ...])')
    shared_layers = _layer_spec(shared.pop("layers", list(ExperimentConfig().layers)), "layers")
    models = tuple(_sweep_model(i, entry, shared, shared_layers) for i, entry in enumerate(entries))
    labels = [model.label for model in models]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(
            f"two models have the label {repeated[0]!r}",
            'Give each [[models]] entry its own label (label = "...")',
        )
    return Sweep(models, dump_toml(data))


def _sweep_model(index: int, entry: Any, shared: dict[str, Any], shared_layers: tuple) -> SweepModel:
    where = f"models[{index}]"
    entry = {"name": entry} if isinstance(entry, str) else entry
    if not isinstance(entry, dict):
        raise invalid(where, entry, "a [[models]] table or a model name")
    entry_keys = {field.name for field in dataclasses.fields(ModelEntry)}
    model_keys = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(entry) - entry_keys - model_keys)
    if unknown:
        raise UserError(
            f"unknown config key {unknown[0]!r} in [[models]] entry {index}",
            f"Valid keys there: {', '.join(sorted(model_keys)) + ', ' + ', '.join(sorted(entry_keys))}",
        )
    own = build_dataclass(ModelEntry, {k: v for k, v in entry.items() if k in entry_keys}, where)
    model = {k: v for k, v in entry.items() if k in model_keys}
    label = own.label or default_label(str(model.get("name", ModelConfig().name)), model.get("revision"))
    if not LABEL.fullmatch(label):
        raise invalid(f"{where}.label", label, "a folder name: letters, digits, '.', '_' and '-'")
    layers = shared_layers if own.layers is None else _layer_spec(list(own.layers), f"{where}.layers")
    for assignment in own.set:
        key = assignment.partition("=")[0].strip()
        if key.split(".")[0] in ("model", "models", "layers"):
            raise UserError(
                f"{where}.set changes {key}", "Set the model's own keys and layers in its [[models]] entry instead"
            )
    data = apply_overrides({**copy.deepcopy(shared), "model": model}, own.set)
    fractions = tuple(float(f) for f in layers) if any(isinstance(f, float) for f in layers) else None
    data["layers"] = [0] if fractions else list(layers)  # a placeholder: the block count is not known yet
    return SweepModel(label, build_dataclass(ExperimentConfig, data), fractions)


def _layer_spec(value: Any, key: str) -> tuple[int | float, ...]:
    """Layers as written: block indices (ints) or fractions of depth in (0, 1] (floats), not both."""
    expected = "block indices (0, 1, ...) or fractions of depth in (0, 1] such as [0.1, 0.35, 0.6], not both"
    items = value if isinstance(value, list) else None
    if not items or not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in items):
        raise invalid(key, value, expected)
    if any(isinstance(item, float) for item in items):
        if not all(isinstance(item, float) and 0 < item <= 1 for item in items) or len(set(items)) < len(items):
            raise invalid(key, value, expected)
    elif min(items) < 0 or len(set(items)) < len(items):
        raise invalid(key, value, expected)
    return tuple(items)


def default_label(name: str, revision: str | None) -> str:
    """`pythia-70m` for EleutherAI/pythia-70m, the file's stem for a GGUF, plus `-{revision}`."""
    shown = display_name(name)
    base = shown.split(" (")[0] if name in EMBEDDED_MODELS else Path(shown).name.removesuffix(".gguf")
    label = f"{base}-{revision}" if revision else base
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_.") or "model"


# --- Running ---


@dataclasses.dataclass(frozen=True)
class ModelOutcome:
    """How one model of a sweep went: a row of RUN/models.json (docs/outputs.md)."""

    label: str
    name: str
    """What outputs call the model (hub id, file or folder name)."""
    status: str
    """`done`, or `failed` (`error` says why; the other models' results are kept)."""
    n_parameters: int | None = None
    """Parameters of the trained model, its size on the gap-vs-size plot; None when it failed to load."""
    n_blocks: int | None = None
    layers: tuple[int, ...] = ()
    """The block indices its SAEs were trained on (fractions resolved)."""
    seconds: float = 0.0
    """Wall time of its part of this command."""
    error: str | None = None


def save_outcomes(run: RunDir, outcomes: Sequence[ModelOutcome]) -> None:
    write_json_atomic(run.models_json, {"models": [dataclasses.asdict(outcome) for outcome in outcomes]})


def load_outcomes(run: RunDir) -> list[ModelOutcome]:
    """Every model's outcome of the last `randsae run` on the sweep ([] when none has finished yet)."""
    if not run.models_json.is_file():
        return []
    rows = read_json(run.models_json, "`randsae run`").get("models", [])
    try:
        return [from_plain(ModelOutcome, row) for row in rows]
    except (TypeError, KeyError) as error:
        raise UserError(f"{run.models_json} is damaged ({error})", "Delete it and rerun `randsae run`") from None


def sweep_of_run(run: RunDir) -> Sweep | None:
    """The sweep a run directory was made with; None for a one-model run."""
    data = read_toml(run.config, "the run's config")
    return build_sweep(data) if is_sweep(data) else None


def check_sweep_run(sweep: Sweep, run: RunDir) -> None:
    """A run directory resumes a sweep only if it was a sweep; each model's part then checks its own config."""
    if run.config.is_file() and sweep_of_run(run) is None:
        raise UserError(
            f"{run.root} holds a run of one model, not of several", "Use a new --out for a config with [[models]]"
        )


def run_sweep(sweep: Sweep, run: RunDir, progress: bool = True) -> list[ModelOutcome]:
    """Run every model's experiment into `models/{label}/` in turn; a model that fails (cannot be loaded, has no
    block list, runs out of memory...) is reported and recorded, and the next one runs. Rerunning resumes each."""
    check_writable(run.root)
    check_sweep_run(sweep, run)
    run.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.config, sweep.toml)
    earlier = {outcome.label: outcome for outcome in load_outcomes(run)}  # kept for the models not rerun yet
    outcomes: list[ModelOutcome] = []
    for index, model in enumerate(sweep.models):
        start = time.perf_counter()
        if progress:
            print(f"model {model.label} ({model.config.model.name}) → {run.model_root(model.label)}")
        try:
            lm, cfg, n_blocks = load_sweep_model(model, resolve_device(model.config.device), progress)
            n_parameters = sum(parameter.numel() for parameter in lm.model.parameters())
            run_pipeline(cfg, run.model_run(model.label), progress=progress, lm=lm)
            del lm
            outcome = ModelOutcome(
                model.label,
                display_name(cfg.model.name),
                "done",
                n_parameters,
                n_blocks,
                cfg.layers,
                time.perf_counter() - start,
            )
        except Exception as error:  # noqa: BLE001  one model's failure must not end the others' runs
            outcome = _failed(model, error, time.perf_counter() - start)
        outcomes.append(outcome)
        later = [earlier[m.label] for m in sweep.models[index + 1 :] if m.label in earlier]
        save_outcomes(run, [*outcomes, *later])  # an interrupted rerun leaves the report every model it had
    return outcomes


def load_sweep_model(
    model: SweepModel, device: torch.device, progress: bool
) -> tuple[LoadedModel, ExperimentConfig, int]:
    """(the loaded model, its experiment with layers resolved, its block count); a block list that cannot be
    found is a UserError naming the `[[models]]` key that sets it."""
    lm = load_model(model.config.model, device, progress=progress)
    try:
        _, blocks = find_blocks(lm.model, model.config.model.blocks)
    except UserError as error:
        raise UserError(
            f"model {model.label}: {error.problem}",
            f"Set blocks in its [[models]] entry (label = {model.label!r}) to the dotted path of its block list, "
            "e.g. blocks = 'gpt_neox.layers' (print(model) shows it)",
        ) from None
    return lm, model.resolve(len(blocks)), len(blocks)


def _failed(model: SweepModel, error: Exception, seconds: float) -> ModelOutcome:
    user_error = error if isinstance(error, UserError) else user_error_for(error, {})
    if user_error is None:
        traceback.print_exc()
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    else:
        reason = " ".join(str(user_error).split())
    print(f"model {model.label} failed: {reason}")  # the command's one error, at the end, names it again
    return ModelOutcome(model.label, display_name(model.config.model.name), "failed", seconds=seconds, error=reason)


def failures(outcomes: Sequence[ModelOutcome], later: Sequence[str] = ()) -> UserError | None:
    """One error naming every failed model (and the `later` stages that failed on a model, `label: problem`),
    raised once the others have run; None when all are done."""
    failed = [f"{outcome.label}: {outcome.error}" for outcome in outcomes if outcome.status == "failed"]
    if not failed and not later:
        return None
    problem = f"{len(failed)} of {len(outcomes)} models failed ({'; '.join(failed)})" if failed else ""
    if later:
        problem += ("; " if problem else "") + f"later stages failed on {'; '.join(later)}"
    return UserError(problem, "Fix them and rerun the same command: finished work is kept and not done again")


def show_sweep_plan(sweep: Sweep, run: RunDir, progress: bool = True) -> None:
    """`randsae run --plan` of a sweep: every model's plan (each model loaded in turn, so a model that cannot be
    loaded or has no block list is an error here), then the sweep's totals; writes nothing."""
    seconds, disk = 0.0, 0
    for model in sweep.models:
        lm, cfg, n_blocks = load_sweep_model(model, resolve_device(model.config.device), progress)
        n_parameters = sum(parameter.numel() for parameter in lm.model.parameters())
        print(f"\nmodel {model.label}: {n_parameters:,} parameters, {n_blocks} blocks, layers {list(cfg.layers)}")
        stages = show_plan(cfg, run.model_run(model.label), progress, lm=lm)
        seconds += sum(stage.seconds for stage in stages if stage.seconds is not None)
        disk += total_disk(stages)
    print(f"\nall {len(sweep.models)} models: {human_seconds(seconds)}, {human_bytes(disk)} of disk")
