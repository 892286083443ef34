"""Several SAE shapes in one experiment (the paper's width × k sweep, its Figures 18 and 19): list-valued
`[sae]` keys, each combination run as its own one-shape run under `RUN/shapes/{label}/`.

`architecture`, `expansion`, `k`, `l1_coefficient` and `l0_coefficient` may each be a list; the run trains
every combination of them on every variant and layer, each architecture with the sparsity settings it takes
(`k` for the TopKs, `l0_coefficient` for JumpReLU, `l1_coefficient` for gated and ReLU-L1). One combination is
a *shape*, labelled by its architecture and the values of the keys that vary (`topk-x16-k32`). Its part of
the run is an ordinary run directory made by `run_pipeline` (so it resumes, plans and checks its config as a
one-shape run does, and every later stage and the report read it as one), sharing the run's token windows
and activation caches: the first shape harvests them, the others train on them (streamed training forwards
the model again per shape). The report puts the shapes' verdicts side by side (report/shape_sweep.py).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from randsae.atomic import write_text_atomic
from randsae.config import (
    SPARSITY_DEFAULTS,
    SWEPT_SAE_KEYS,
    ExperimentConfig,
    is_shape_sweep,
    load_run_config,
)
from randsae.errors import UserError
from randsae.experiment import check_resume, check_writable, resolve_device, run_pipeline, show_plan
from randsae.metrics.results import MetricsRow
from randsae.models.load import LoadedModel, load_model
from randsae.plan import human_bytes, human_seconds, total_disk
from randsae.run_dir import RunDir
from randsae.toml_config import build_dataclass, dump_toml, invalid, read_toml

SHARED_STAGES = ("tokenize", "harvest")
"""The plan's stages whose outputs (token windows, activation caches) every shape of a sweep shares."""
LABEL_PREFIXES = {"expansion": "x", "k": "k", "l1_coefficient": "l1_", "l0_coefficient": "l0_"}
"""How a varying key shows in a shape's label: `topk-x16-k32`, `jumprelu-l0_0.001`."""


@dataclasses.dataclass(frozen=True)
class SweepShape:
    """One SAE shape of a sweep: its label (its folder under `shapes/`) and its one-shape experiment."""

    label: str
    config: ExperimentConfig


@dataclasses.dataclass(frozen=True)
class ShapeSweep:
    shapes: tuple[SweepShape, ...]
    toml: str
    """The sweep config as given (after `--set`), written to RUN/config.toml: rerunnable with --config."""


def build_shape_sweep(data: dict[str, Any]) -> ShapeSweep:
    """Every shape's experiment, each checked whole, before any work; a list-valued key refused where no
    architecture of the sweep takes it, or where its values repeat."""
    sae = data["sae"]
    values = {key: _values(sae, key) for key in SWEPT_SAE_KEYS}
    sparsity = {name for names in SPARSITY_DEFAULTS.values() for name in names}
    taken = {name for architecture in values["architecture"] for name in _taken(architecture)}
    unused = sorted((sparsity - taken) & {key for key, value in sae.items() if value is not None})
    if unused:
        architectures = ", ".join(map(str, values["architecture"]))
        raise UserError(
            f"sae.{unused[0]} is set, but no architecture of the sweep ({architectures}) takes it",
            f"Remove sae.{unused[0]}",
        )
    varying = [key for key in SWEPT_SAE_KEYS[1:] if len(values[key]) > 1]
    shapes = []
    for architecture in values["architecture"]:
        axes = ["expansion", *(key for key in SWEPT_SAE_KEYS[2:] if key in _taken(architecture))]
        fixed = {  # the other keys: what this architecture takes (or an unknown key, which is refused)
            key: value
            for key, value in sae.items()
            if key not in SWEPT_SAE_KEYS and (key not in sparsity or key in _taken(architecture))
        }
        for combination in itertools.product(*(values[axis] for axis in axes)):
            chosen = {axis: value for axis, value in zip(axes, combination, strict=True) if value is not None}
            label = "-".join(
                [
                    str(architecture),
                    *(f"{LABEL_PREFIXES[key]}{_shown(chosen[key])}" for key in varying if key in chosen),
                ]
            )
            shapes.append(
                SweepShape(label, _shape_config(data, {**fixed, "architecture": architecture, **chosen}, label))
            )
    return ShapeSweep(tuple(shapes), dump_toml(data))


def _values(sae: dict[str, Any], key: str) -> list[Any]:
    """A swept key's values: its list, or its one value (unset: None, the architecture's default; `topk`)."""
    value = sae.get(key, "topk" if key == "architecture" else None)
    if not isinstance(value, list):
        return [value]
    if not value or len({repr(item) for item in value}) < len(value):
        raise invalid(f"sae.{key}", value, "a non-empty list of distinct values (or one value)")
    return value


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _taken(architecture: Any) -> dict[str, Any]:
    """The sparsity settings an architecture takes ({} for a name that is not one: refused when built)."""
    return SPARSITY_DEFAULTS.get(architecture, {}) if isinstance(architecture, str) else {}


def _shape_config(data: dict[str, Any], sae: dict[str, Any], label: str) -> ExperimentConfig:
    """One shape's experiment; its errors name the shape."""
    try:
        return build_dataclass(ExperimentConfig, {**data, "sae": sae})
    except UserError as error:
        raise UserError(f"SAE shape {label}: {error.problem}", error.fix) from None


def shape_sweep_of_run(run: RunDir) -> ShapeSweep | None:
    """The shape sweep a run directory was made with; None for any other run."""
    data = read_toml(run.config, "the run's config")
    return build_shape_sweep(data) if is_shape_sweep(data) else None


def shape_runs(run: RunDir, sweep: ShapeSweep) -> list[tuple[str, RunDir]]:
    """(label, part) of each shape of the sweep `run` holds that `randsae run` has started, in the config's
    order."""
    parts = [(shape.label, run.shape_run(shape.label)) for shape in sweep.shapes]
    return [(label, part) for label, part in parts if part.config.is_file()]


def check_sweep_resume(sweep: ShapeSweep, run: RunDir) -> None:
    """A run directory resumes a shape sweep only if it holds one; each shape started is checked against its
    own config, and a shape new to the run against the data of one that exists (its SAE settings aside), so
    no shape trains on token windows or caches made with other settings. All before any work."""
    if not run.config.is_file():
        return
    if not is_shape_sweep(read_toml(run.config, "the run's config")):
        raise UserError(
            f"{run.root} holds a run of one SAE shape, not a sweep over shapes",
            "Use a new --out for a config with list-valued [sae] keys",
        )
    started = [run.shape_run(shape.label) for shape in sweep.shapes if run.shape_run(shape.label).config.is_file()]
    for shape in sweep.shapes:
        part = run.shape_run(shape.label)
        if part.config.is_file():
            check_resume(shape.config, part)
        elif started:
            reference = load_run_config(started[0])
            check_resume(dataclasses.replace(shape.config, sae=reference.sae), started[0])


def run_shape_sweep(
    sweep: ShapeSweep, run: RunDir, *, progress: bool = True, lm: LoadedModel | None = None
) -> dict[str, list[MetricsRow]]:
    """Run every shape's experiment into `shapes/{label}/` in turn, on one loaded model; returns each shape's
    metrics rows. Rerunning resumes each. Only the first shape's plan is timed and printed (a few seconds of
    forwards each); `--plan` shows every shape's."""
    check_writable(run.root)
    check_sweep_resume(sweep, run)
    first = sweep.shapes[0].config
    lm = lm or load_model(first.model, resolve_device(first.device), progress=progress)
    for shape in sweep.shapes:  # k below d_sae: known only with the model's width, checked before any work
        try:
            shape.config.sae.sae_config(lm.model.config.hidden_size)
        except UserError as error:
            raise UserError(f"SAE shape {shape.label}: {error.problem}", error.fix) from None
    run.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.config, sweep.toml)
    rows = {}
    for index, shape in enumerate(sweep.shapes):
        if progress:
            print(f"SAE shape {shape.label} → {run.shape_run(shape.label).root}")
        part = run.shape_run(shape.label)
        rows[shape.label] = run_pipeline(shape.config, part, progress=progress, lm=lm, plan=index == 0)
    return rows


def show_shape_sweep_plan(sweep: ShapeSweep, run: RunDir, progress: bool = True) -> None:
    """`randsae run --plan` of a shape sweep: every shape's plan (the model loaded once), then the totals, the
    token windows and activation caches counted once (the first shape makes them, the others read them)."""
    first = sweep.shapes[0].config
    lm = load_model(first.model, resolve_device(first.device), progress=progress)
    seconds, disk = 0.0, 0
    for index, shape in enumerate(sweep.shapes):
        print(f"\nSAE shape {shape.label}")
        stages = show_plan(shape.config, run.shape_run(shape.label), progress, lm=lm)
        own = [stage for stage in stages if index == 0 or not stage.name.startswith(SHARED_STAGES)]
        seconds += sum(stage.seconds for stage in own if stage.seconds is not None)
        disk += total_disk(own)
    print(
        f"\nall {len(sweep.shapes)} shapes: {human_seconds(seconds)}, {human_bytes(disk)} of disk "
        "(tokenize and harvest counted once: the shapes share them)"
    )
