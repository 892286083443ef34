"""docs/outputs.md keeps up with what the stages write.

On a complete synthetic run (real interp and analysis stages, tests.helpers.build_report_run), every column
header of metrics.csv, interp/{judge}/latents.csv, analysis/separation.csv and analysis/latents.csv, and every
field of the per-SAE records of interp.json and analysis.json, must be a row of the document's table for that
file, and those tables must name nothing the file lacks. A new column without documentation fails here.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from tests.helpers import build_report_run

DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"
ROW_NAME = re.compile(r"^\|\s*`([A-Za-z0-9_]+)`\s*\|")


def documented(heading: str) -> list[str]:
    """The backticked first-column names of every table row in the section headed exactly `heading` (up to
    the next heading of the same or a higher level)."""
    lines = DOC.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("#") and line.lstrip("#").strip() == heading]
    assert len(starts) == 1, f"docs/outputs.md needs exactly one heading {heading!r}"
    level = len(lines[starts[0]]) - len(lines[starts[0]].lstrip("#"))
    names = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        match = ROW_NAME.match(line)
        if match:
            names.append(match.group(1))
    return names


def header(path: Path) -> list[str]:
    with open(path, newline="") as file:
        return next(csv.reader(file))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build_report_run(
        tmp_path_factory.mktemp("outputs_doc"), variants=("trained", "control"), layers=(1,), n_latents=3
    )


@pytest.mark.parametrize(
    "heading, path",
    [
        ("`metrics.csv`", "metrics.csv"),
        ("`interp/{judge}/latents.csv`", "interp/token/latents.csv"),
        ("`analysis/separation.csv`", "analysis/separation.csv"),
        ("`analysis/latents.csv`", "analysis/latents.csv"),
    ],
)
def test_every_csv_column_is_documented(run, heading, path):
    columns, names = header(run / path), documented(heading)
    assert len(names) == len(set(names)), f"a column is documented twice under {heading}"
    assert not set(columns) - set(names), f"{path}: columns missing from docs/outputs.md: {set(columns) - set(names)}"
    assert not set(names) - set(columns), f"docs/outputs.md documents columns {path} lacks: {set(names) - set(columns)}"


def test_metrics_json_has_the_csv_columns(run):
    rows = json.loads((run / "metrics.json").read_text())
    assert list(rows[0]) == header(run / "metrics.csv")
    own = [json.loads(path.read_text()) for path in sorted((run / "saes").glob("*/layer*/metrics.json"))]
    assert len(own) == len(rows) and all(list(row) == list(rows[0]) for row in own), "each SAE's row file too"


def test_interp_json_fields_are_documented(run):
    summary = json.loads((run / "interp" / "token" / "interp.json").read_text())
    sae = summary["saes"][0]
    fields = {*summary, *sae, *sae["fuzz"], *sae["detection"], *sae["token_entropy"], *sae["fuzz"]["latent_auroc"]}
    names = set(documented("`interp/{judge}/interp.json`"))
    assert fields == names, f"undocumented: {fields - names}; documented but absent: {names - fields}"


def test_analysis_json_fields_are_documented(run):
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    fields = {*analysis, *analysis["saes"][0]}
    names = set(documented("`analysis/analysis.json`"))
    assert fields == names, f"undocumented: {fields - names}; documented but absent: {names - fields}"
    assert set(analysis["separation"][0]) == set(header(run / "analysis" / "separation.csv"))
    with open(run / "analysis" / "separation.csv", newline="") as file:
        metrics = {row["metric"] for row in csv.DictReader(file)}
    assert metrics <= names, f"separation.csv metrics without an analysis.json row: {metrics - names}"


def test_every_file_of_the_run_is_named(run):
    """Top-level entries, one judge's folder, the analysis folder and a latent cache."""
    text = DOC.read_text()
    entries = [
        *run.iterdir(),
        *(run / "interp" / "token").iterdir(),
        *(run / "analysis").iterdir(),
        *(run / "interp" / "latent_cache" / "trained.layer1").iterdir(),
    ]
    for entry in entries:
        name = re.sub(r"_\d+", "_NNNNN", entry.name)  # shard_00000.safetensors -> shard_NNNNN.safetensors
        assert name in text, f"{entry.relative_to(run)} is not in docs/outputs.md"


def test_verdict_json_fields_are_documented(run):
    verdict = json.loads((run / "analysis" / "verdict.json").read_text())
    names = set(documented("`analysis/verdict.json`"))
    assert verdict["verdict"] and set(verdict["verdict"][0]) == names
    assert {"min_units", "min_replicates", "effect", "verdict"} == set(verdict)
