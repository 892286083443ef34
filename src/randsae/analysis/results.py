"""What the analysis stage hands back and writes: the summary, `analysis.json`, `verdict.json`, `separation.csv`,
`latents.csv`.

Every file is written to a temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from randsae.analysis.config import AnalysisConfig
from randsae.analysis.measure import LatentMeasures, SAEMeasurements
from randsae.analysis.replicates import ReplicateSpread
from randsae.analysis.separation import SeparationRow, format_rows
from randsae.analysis.verdict import VerdictRow, format_verdict, verdict_json
from randsae.atomic import write_json_atomic, write_text_atomic
from randsae.errors import UserError
from randsae.records import from_plain
from randsae.run_dir import RunDir, SAEKey, read_json

LATENT_COLUMNS = (
    "variant",
    "layer",
    "variant_seed",
    "sae_seed",
    "latent",
    "firing_count",
    "top_token_id",
    "top_token_share",
    "single_token",
    "positional_r2",
    "positional",
    "context_dependence",
    "seed_match_cosine",
)


@dataclasses.dataclass(frozen=True)
class AnalysisSummary:
    """The analysis of one run directory."""

    config: AnalysisConfig
    saes: tuple[SAEMeasurements, ...]
    """One record per SAE (variant x layer x replicate), trained first."""
    separation: tuple[SeparationRow, ...]
    """Pooled rows (layer "all") best-separating metric first, then the per-layer rows."""
    verdict: tuple[VerdictRow, ...]
    """Per measurement x variant: the pooled difference and the reading over layers (verdict.json)."""
    replicates: tuple[ReplicateSpread, ...]
    """Spread over replicates per measurement x variant x layer, where a variant has several."""
    notes: tuple[str, ...]
    """What could not be measured and why (no interp scores, no trained SAE, ...)."""


def analysis_json(summary: AnalysisSummary) -> dict[str, Any]:
    """The content of analysis.json."""
    return {
        "config": dataclasses.asdict(summary.config),
        "saes": [dataclasses.asdict(m) for m in summary.saes],
        "separation": [row._asdict() for row in summary.separation],
        "replicates": [row._asdict() for row in summary.replicates],
        "notes": list(summary.notes),
        "latents_file": "latents.csv",
    }


def separation_csv(rows: tuple[SeparationRow, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SeparationRow._fields)
    writer.writerows(rows)
    return buffer.getvalue()


def latents_csv(
    latents: Mapping[SAEKey, LatentMeasures],
    matches: Mapping[SAEKey, np.ndarray],
    cfg: AnalysisConfig,
) -> str:
    """One row per latent of every SAE; empty cells where a value is undefined (and a replicate axis the run
    does not vary)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LATENT_COLUMNS)
    for key, m in latents.items():
        n = m.firing_count.size
        match = matches.get(key, np.full(n, np.nan))
        columns = [
            [key.variant] * n,
            [key.layer] * n,
            ["" if key.variant_seed is None else key.variant_seed] * n,
            ["" if key.sae_seed is None else key.sae_seed] * n,
            range(n),
            m.firing_count,
            m.top_token_id,
            _cells(m.top_token_share),
            (m.top_token_share >= cfg.single_token_threshold).astype(int),
            _cells(m.positional_r2),
            (np.nan_to_num(m.positional_r2) >= cfg.positional_threshold).astype(int),
            _cells(m.context_dependence),
            _cells(match),
        ]
        writer.writerows(zip(*columns, strict=True))
    return buffer.getvalue()


def _cells(values: np.ndarray) -> list[str]:
    return ["" if not math.isfinite(v) else f"{v:.6g}" for v in values.tolist()]


def write_outputs(
    run: RunDir,
    summary: AnalysisSummary,
    latents: Mapping[SAEKey, LatentMeasures],
    matches: Mapping[SAEKey, np.ndarray],
) -> None:
    write_text_atomic(run.analysis_latents_csv, latents_csv(latents, matches, summary.config))
    write_text_atomic(run.separation_csv, separation_csv(summary.separation))
    write_json_atomic(run.verdict_json, verdict_json(summary.verdict))
    write_json_atomic(run.analysis_json, analysis_json(summary))


def format_separation_table(summary: AnalysisSummary) -> str:
    """The printed summary: the verdict, the pooled separation rows (best-separating metric first), the notes."""
    parts = [format_verdict(summary.verdict)]
    if summary.separation:
        parts.append(
            "\nWhat separates trained from random (pooled over layers; effect = direction x difference / "
            "bootstrap SE, p = rank test)\n" + format_rows(summary.separation)
        )
    return "\n".join([*parts, *(f"note: {note}" for note in summary.notes)])


def load_analysis(run: RunDir) -> AnalysisSummary:
    """RUN/analysis/analysis.json back as the `AnalysisSummary` that wrote it."""
    data = read_json(run.analysis_json, "`randsae analyze`")
    verdict = read_json(run.verdict_json, "`randsae analyze`")
    try:
        return AnalysisSummary(
            from_plain(AnalysisConfig, data["config"]),
            tuple(from_plain(SAEMeasurements, sae) for sae in data["saes"]),
            tuple(from_plain(SeparationRow, row) for row in data["separation"]),
            tuple(from_plain(VerdictRow, row) for row in verdict["verdict"]),
            tuple(from_plain(ReplicateSpread, row) for row in data["replicates"]),
            tuple(str(note) for note in data["notes"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"{run.analysis_json} holds damaged analysis results ({error!r})", "Delete it and rerun `randsae analyze`"
        ) from None
