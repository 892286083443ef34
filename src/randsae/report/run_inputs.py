"""Everything the report reads from a run directory, through each stage's own loader.

Only `metrics.json` is required. The interp and analysis stages are optional: when their files are
absent, the matching field is None and a note says why, so the report shows a visible remark instead of
failing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from randsae.analysis.results import AnalysisSummary, load_analysis
from randsae.config import ExperimentConfig, load_run_config
from randsae.errors import UserError
from randsae.interop.imported import SAEOrigin, read_origin
from randsae.interp.ablation import AblationRow, ablation_rows
from randsae.interp.calibration import load_calibration
from randsae.interp.summary import InterpSummary, health_warnings, load_interp_summary
from randsae.metrics.results import MetricsRow, load_metrics
from randsae.records import from_plain
from randsae.run_dir import SAE_ORIGIN_FILE, SAE_TRAINING_FILE, InterpDir, RunDir, SAEKey, read_json
from randsae.sae.trainer import CurvePoint


@dataclasses.dataclass(frozen=True)
class InterpResults:
    """One judge's auto-interp results (docs/interp.md)."""

    judge: str
    """The judge's folder name under RUN/interp/ (`token`, `http-<model>`, ...)."""
    files: InterpDir
    summary: InterpSummary
    settings: dict[str, Any]
    """The protocol settings the latents were sampled with (selection.json: window_size, n_quantiles, ...)."""
    judge_failed: bool = False
    """The judge failed its calibration on probe latents: its AUROCs are flagged as not meaningful."""
    ablation: tuple[AblationRow, ...] = ()
    """The explainer ablation (the same judge scoring token lists), when the run has it."""


@dataclasses.dataclass(frozen=True)
class RunInputs:
    run: RunDir
    config: ExperimentConfig | None
    """The resolved experiment config (`config.toml`); None when the file is missing."""
    metrics: tuple[MetricsRow, ...]
    timings: dict[str, float]
    variants: tuple[str, ...]
    """In the config's order, then any other variant found in the results."""
    layers: tuple[int, ...]
    interp: InterpResults | None
    """The first of the run's judges (an LLM judge's results when there are any)."""
    analysis: AnalysisSummary | None
    notes: tuple[str, ...]
    """Why an optional part is missing, shown at the top of the report."""
    learning_curves: dict[SAEKey, tuple[CurvePoint, ...]] = dataclasses.field(default_factory=dict)
    """Each evaluated SAE's held-out learning curve (training.json), where it has one."""
    origins: dict[SAEKey, SAEOrigin] = dataclasses.field(default_factory=dict)
    """Where each SAE imported by `randsae compare` came from (origin.json); the others were trained here."""


def read_run(run: RunDir) -> RunInputs:
    """Read and check a run directory; UserError when it has no SAE's metrics row."""
    if not run.root.is_dir():
        raise UserError(f"run directory {run.root} does not exist", "Pass the folder written by `randsae run`")
    metrics = tuple(load_metrics(run))
    if not metrics:
        raise UserError(
            f"{run.root} has no quality metrics yet (no SAE's metrics.json)",
            "Run `randsae run` on this folder first (the report needs at least one evaluated SAE)",
        )
    notes: list[str] = [f"{missing}."] if (missing := run.missing_saes()) else []
    config = None
    if run.config.is_file():
        config = load_run_config(run)
    else:
        notes.append("config.toml is missing: model, data and SAE settings are not shown.")
    timings: dict[str, float] = {}
    if run.timings.is_file():
        timings = {str(k): float(v) for k, v in read_json(run.timings, "`randsae run`").items()}
    else:
        notes.append("timings.json is missing: wall time per stage is not shown.")
    interp = _read_interp(run, notes)
    analysis = _read_analysis(run, notes)
    found = [
        row.variant
        for rows in (metrics, interp.summary.saes if interp else (), analysis.saes if analysis else ())
        for row in rows
    ]
    configured = list(config.variants) if config else []
    variants = tuple(dict.fromkeys([*(v for v in configured if v in found), *found]))
    layers = tuple(sorted({row.layer for row in metrics}))
    curves = _read_learning_curves(run, metrics)
    origins = {
        row.key: read_origin(run.sae(row.key) / SAE_ORIGIN_FILE)
        for row in metrics
        if (run.sae(row.key) / SAE_ORIGIN_FILE).is_file()
    }
    return RunInputs(run, config, metrics, timings, variants, layers, interp, analysis, tuple(notes), curves, origins)


def _read_learning_curves(run: RunDir, metrics: tuple[MetricsRow, ...]) -> dict[SAEKey, tuple[CurvePoint, ...]]:
    """The non-empty `heldout_curve`s of the SAEs' training.json files (absent before learning curves existed)."""
    curves = {}
    for row in metrics:
        path = run.sae(row.key) / SAE_TRAINING_FILE
        if path.is_file():
            plain = read_json(path, "`randsae run`").get("heldout_curve") or []
            curves[row.key] = from_plain(tuple[CurvePoint, ...], plain)
    return {key: curve for key, curve in curves.items() if curve}


def _read_interp(run: RunDir, notes: list[str]) -> InterpResults | None:
    judges = run.interp_judges()
    if not judges:
        notes.append(
            "No auto-interpretability results (interp/*/interp.json): fuzzing and detection AUROC, ROC "
            "curves, token entropy and latent dashboards are left out. Run `randsae interpret RUN_DIR`."
        )
        return None
    if len(judges) > 1:
        notes.append(
            f"Auto-interp results of the {judges[0]} judge are shown; the run also has "
            f"{', '.join(judges[1:])} (RUN/interp/)."
        )
    files = run.interp(judges[0])
    settings = (
        read_json(files.selection, "`randsae interpret`").get("settings", {}) if files.selection.is_file() else {}
    )
    summary = load_interp_summary(files)
    calibration = load_calibration(files)
    if calibration is not None:
        notes.insert(0, calibration.describe() + ".")
    ablation: tuple[AblationRow, ...] = ()
    if files.explainer_ablation.summary.is_file():
        ablation = ablation_rows(summary, load_interp_summary(files.explainer_ablation))
    notes += [
        f"Explanation health of {sae.module}: {text}. Its AUROCs may measure the explainer, not the latents."
        for sae in summary.saes
        for text in health_warnings(sae)
    ]
    judge_failed = calibration is not None and calibration.fails
    return InterpResults(judges[0], files, summary, settings, judge_failed, ablation)


def _read_analysis(run: RunDir, notes: list[str]) -> AnalysisSummary | None:
    if not run.analysis_json.is_file():
        notes.append(
            "No separation analysis (analysis/analysis.json): single-token, positional and token-lookup "
            "measurements and the separation table are left out. Run `randsae analyze RUN_DIR`."
        )
        return None
    return load_analysis(run)


def as_row(record: Any) -> dict[str, Any]:
    """A result dataclass or NamedTuple as a table row (its fields by name)."""
    return record._asdict() if hasattr(record, "_asdict") else dataclasses.asdict(record)
