"""Everything the report reads from a run directory, checked once and held in frozen dataclasses.

Only `metrics.json` is required. The interp and analysis stages are optional: when their files are
absent, the matching `*_results` field is None and a note says why, so the report shows a visible
remark instead of failing.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import tomllib

from randsae.errors import UserError
from randsae.interp.outputs import InterpPaths
from randsae.interp.summary import LatentResult

METRICS_JSON = "metrics.json"
CONFIG_TOML = "config.toml"
TIMINGS_JSON = "timings.json"
ANALYSIS_JSON = "analysis/analysis.json"


@dataclasses.dataclass(frozen=True)
class InterpResults:
    """The auto-interp stage's summary (`interp/interp.json`), per-latent table (`interp/latents.csv`) and
    sampling settings (`interp/selection.json`); see docs/interp.md."""

    folder: Path
    summary: dict[str, Any]
    saes: tuple[dict[str, Any], ...]
    """interp.json's `saes`: per variant x layer, `fuzz` and `detection` summaries, `token_entropy`, counts."""
    latents: tuple[dict[str, Any], ...]
    """latents.csv rows (`randsae.interp.summary.LatentResult` fields), NaN for empty numeric cells."""
    settings: dict[str, Any]
    """The protocol settings the latents were sampled with (window_size, n_quantiles, judge, ...)."""


@dataclasses.dataclass(frozen=True)
class AnalysisResults:
    """The analysis stage's `analysis/analysis.json`: per-SAE measurements and the separation table."""

    saes: tuple[dict[str, Any], ...]
    separation: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RunInputs:
    run_dir: Path
    config: dict[str, Any]
    """The resolved experiment config (`config.toml`), empty when the file is missing."""
    metrics: tuple[dict[str, Any], ...]
    """`metrics.json`: one row per variant x layer."""
    timings: dict[str, float]
    variants: tuple[str, ...]
    """In the config's order, then any other variant found in the results."""
    layers: tuple[int, ...]
    interp: InterpResults | None
    analysis: AnalysisResults | None
    notes: tuple[str, ...]
    """Why an optional part is missing, shown at the top of the report."""


def read_run(run_dir: Path) -> RunInputs:
    """Read and check a run directory; UserError when it has no usable `metrics.json`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist", "Pass the folder written by `randsae run`")
    metrics = _read_metrics(run_dir / METRICS_JSON)
    notes: list[str] = []
    config = _read_toml(run_dir / CONFIG_TOML, notes)
    timings = {}
    if (run_dir / TIMINGS_JSON).is_file():
        timings = _read_json(run_dir / TIMINGS_JSON)
    else:
        notes.append(f"{TIMINGS_JSON} is missing: wall time per stage is not shown.")
    interp = _read_interp(run_dir, notes)
    analysis = _read_analysis(run_dir, notes)
    found = [str(row["variant"]) for rows in (metrics, interp.saes if interp else (),
                                               analysis.saes if analysis else ()) for row in rows]
    configured = [v for v in config.get("variants", []) if isinstance(v, str)]
    variants = tuple(dict.fromkeys([*(v for v in configured if v in found), *found]))
    layers = tuple(sorted({int(row["layer"]) for row in metrics}))
    return RunInputs(run_dir, config, metrics, {str(k): float(v) for k, v in timings.items()}, variants, layers,
                     interp, analysis, tuple(notes))


def _read_metrics(path: Path) -> tuple[dict[str, Any], ...]:
    if not path.is_file():
        raise UserError(f"{path} not found: the run has no quality metrics yet",
                        "Run `randsae run` on this folder first (the report needs at least metrics.json)")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error})", "Re-run the quality stage to rewrite it") from error
    if not isinstance(rows, list) or not rows or not all(
            isinstance(row, dict) and "variant" in row and "layer" in row for row in rows):
        raise UserError(f"{path} must be a non-empty list of rows with 'variant' and 'layer'",
                        "Re-run the quality stage to rewrite it")
    return tuple({**row, "layer": int(row["layer"])} for row in rows)


def _read_toml(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"{path.name} is missing: model, data and SAE settings are not shown.")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML ({error})", "Fix or delete the file") from error


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error})", "Re-run the stage that writes it") from error


def _read_interp(run_dir: Path, notes: list[str]) -> InterpResults | None:
    paths = InterpPaths(run_dir / "interp")
    if not paths.summary.is_file():
        notes.append("No auto-interpretability results (interp/interp.json): fuzzing and detection AUROC, ROC "
                     "curves, token entropy and latent dashboards are left out. Run `randsae interpret RUN_DIR`.")
        return None
    summary = _read_json(paths.summary)
    latents = _read_latents_csv(paths.table) if paths.table.is_file() else ()
    settings = _read_json(paths.selection).get("settings", {}) if paths.selection.is_file() else {}
    return InterpResults(paths.root, summary, tuple(summary.get("saes", ())), latents, settings)


def _read_analysis(run_dir: Path, notes: list[str]) -> AnalysisResults | None:
    if not (run_dir / ANALYSIS_JSON).is_file():
        notes.append("No separation analysis (analysis/analysis.json): single-token, positional and token-lookup "
                     "measurements and the separation table are left out. Run `randsae analyze RUN_DIR`.")
        return None
    data = _read_json(run_dir / ANALYSIS_JSON)
    return AnalysisResults(tuple(data.get("saes", ())), tuple(data.get("separation", ())),
                           tuple(data.get("notes", ())))


def _read_latents_csv(path: Path) -> tuple[dict[str, Any], ...]:
    """latents.csv rows, each cell parsed as its `LatentResult` field's type (an empty number is NaN)."""
    kinds = {field.name: {"int": int, "float": float}.get(str(field.type), str)
             for field in dataclasses.fields(LatentResult)}
    with open(path, newline="") as file:
        return tuple({key: _parse_cell(text, kinds.get(key, str)) for key, text in row.items()}
                     for row in csv.DictReader(file))


def _parse_cell(text: str, kind: type) -> Any:
    if kind is str:
        return text
    if text == "":
        return math.nan
    try:
        return kind(text)
    except ValueError:
        return float(text)
