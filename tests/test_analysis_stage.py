"""The analysis stage end to end on a synthetic run directory with planted latents."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from randsae.analysis import AnalysisConfig, analyze_run, format_separation_table
from randsae.analysis.separation import ALL_LAYERS
from randsae.analysis.stage import JUDGE_NOT_CALIBRATED
from randsae.errors import UserError
from randsae.interp.calibration import JudgeCalibration, TaskCalibration, save_calibration
from randsae.run_dir import RunDir
from tests.helpers import STRUCTURED, TOKEN_ONLY, build_analysis_run

PLANTED = {"positional_fraction", "mean_positional_r2", "mean_context_dependence", "lookup_ev", "sae_ev_beyond_lookup"}
NOT_PLANTED = {"single_token_fraction", "mean_top_token_share", "sae_ev"}


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory) -> Path:
    return build_analysis_run(tmp_path_factory.mktemp("run"), {"trained": STRUCTURED, "step0": TOKEN_ONLY})


@pytest.fixture(scope="module")
def summary(planted_run: Path):
    return analyze_run(planted_run, AnalysisConfig(bootstrap_samples=300), progress=False)


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_separation_table_ranks_the_planted_metrics_first(summary):
    pooled = [row for row in summary.separation if row.layer == ALL_LAYERS]
    order = [row.metric for row in pooled]
    assert set(order[: len(PLANTED)]) == PLANTED
    assert set(order[len(PLANTED) :]) == NOT_PLANTED
    by_metric = {row.metric: row for row in pooled}
    assert by_metric["positional_fraction"].difference == pytest.approx(0.25)
    assert by_metric["positional_fraction"].ci_low > 0
    assert by_metric["mean_context_dependence"].ci_low > 0.1
    assert by_metric["lookup_ev"].ci_high < 0  # the lookup leaves the planted structure unexplained
    for metric in ("single_token_fraction", "sae_ev"):  # alike by construction
        row = by_metric[metric]
        assert row.ci_low <= 0.0 <= row.ci_high and abs(row.effect) < 1.96


def test_verdict_reads_the_planted_differences(planted_run: Path, summary):
    verdict = {row.metric: row for row in summary.verdict}
    assert set(verdict) == PLANTED | NOT_PLANTED and all(row.variant == "step0" for row in summary.verdict)
    for metric in ("positional_fraction", "mean_context_dependence", "sae_ev_beyond_lookup"):
        assert verdict[metric].reading == "separates at every layer" and verdict[metric].effect > 0
    # random above trained is what lookup_ev separates by (direction -1)
    assert verdict["lookup_ev"].direction == -1 and verdict["lookup_ev"].reading == "separates at every layer"
    assert verdict["single_token_fraction"].reading == "does not separate"
    assert verdict["positional_fraction"].separating_layers == ("0", "1")
    assert verdict["positional_fraction"].n_units == 48  # 24 frequency bins at each of 2 layers
    written = _strict_json((planted_run / "analysis" / "verdict.json").read_text())
    assert [row["metric"] for row in written["verdict"]] == [row.metric for row in summary.verdict]
    assert written["min_units"] == 5 and written["min_replicates"] == 3
    assert format_separation_table(summary).startswith("Verdict: trained vs each random variant")


def test_per_sae_measurements_match_the_planted_kinds(summary):
    records = {(m.variant, m.layer): m for m in summary.saes}
    assert list(records) == [("trained", 0), ("trained", 1), ("step0", 0), ("step0", 1)]
    for layer in (0, 1):
        trained, step0 = records[("trained", layer)], records[("step0", layer)]
        assert trained.n_alive == step0.n_alive == trained.n_measured == step0.n_measured == 24
        assert trained.single_token_fraction == step0.single_token_fraction == pytest.approx(6 / 24)
        assert trained.positional_fraction == pytest.approx(6 / 24) and step0.positional_fraction == 0.0
        assert step0.mean_context_dependence == pytest.approx(0.0, abs=1e-9)
        assert step0.sae_ev_beyond_lookup == pytest.approx(0.0, abs=0.05)
        assert trained.sae_ev_beyond_lookup > 0.3


def test_files_are_written_and_readable(planted_run: Path, summary):
    folder = planted_run / "analysis"
    data = _strict_json((folder / "analysis.json").read_text())
    assert [(s["variant"], s["layer"]) for s in data["saes"]] == [(m.variant, m.layer) for m in summary.saes]
    assert data["config"]["single_token_threshold"] == 0.9
    assert data["saes"][0]["fuzz_auroc_single_token"] is None  # NaN written as null
    with open(folder / "separation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(summary.separation) == 8 * 3
    assert rows[0]["metric"] == summary.separation[0].metric
    with open(folder / "latents.csv") as handle:
        latents = list(csv.DictReader(handle))
    assert len(latents) == 4 * 24
    positional = [r for r in latents if r["variant"] == "trained" and r["positional"] == "1"]
    assert len(positional) == 12 and all(float(r["positional_r2"]) > 0.9 for r in positional)
    text = format_separation_table(summary)
    assert "positional_fraction" in text and "note: auto-interp split skipped" in text


def test_rerun_reuses_saved_measurements_and_applies_new_thresholds(planted_run: Path, summary):
    part = planted_run / "analysis" / "parts" / "trained.layer0.npz"
    stamp = part.stat().st_mtime_ns
    strict = analyze_run(planted_run, AnalysisConfig(bootstrap_samples=50, positional_threshold=1.0), progress=False)
    assert part.stat().st_mtime_ns == stamp
    assert strict.saes[0].positional_fraction < summary.saes[0].positional_fraction
    rebinned = analyze_run(planted_run, AnalysisConfig(bootstrap_samples=50, position_bins=4), progress=False)
    assert part.stat().st_mtime_ns != stamp
    assert rebinned.saes[0].mean_positional_r2 != summary.saes[0].mean_positional_r2


def test_interp_scores_are_split_by_latent_type(tmp_path: Path, planted_run: Path):
    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    (run / "interp" / "token").mkdir(parents=True)
    with open(run / "interp" / "token" / "latents.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "layer", "latent", "fuzz_auroc", "detection_auroc", "token_entropy"])
        for variant in ("trained", "step0"):
            for latent in range(24):  # latents 0-5 are single-token in both variants
                fuzz = 0.9 if latent < 6 else (0.6 if variant == "trained" else 0.7)
                writer.writerow([variant, 0, latent, fuzz, "" if latent == 7 else 0.8, 1.0])
    result = analyze_run(run, AnalysisConfig(bootstrap_samples=50), progress=False)
    records = {(m.variant, m.layer): m for m in result.saes}
    trained = records[("trained", 0)]
    assert trained.n_interp_single_token == 6 and trained.n_interp_contextual == 18
    assert trained.fuzz_auroc_single_token == pytest.approx(0.9)
    assert trained.fuzz_auroc_contextual == pytest.approx(0.6)
    assert trained.detection_auroc_contextual == pytest.approx(0.8)
    assert trained.fuzz_auroc == pytest.approx((6 * 0.9 + 18 * 0.6) / 24)  # every scored latent together
    assert trained.detection_auroc == pytest.approx(0.8)
    assert np.isnan(records[("trained", 1)].fuzz_auroc_contextual)
    rows = {(r.metric, r.layer): r for r in result.separation if r.variant == "step0"}
    assert rows[("fuzz_auroc_contextual", "0")].difference == pytest.approx(-0.1)
    assert rows[("fuzz_auroc_single_token", "0")].difference == pytest.approx(0.0)
    assert not any("auto-interp" in note for note in result.notes)
    assert not any(row.reading == JUDGE_NOT_CALIBRATED for row in result.verdict)

    # The same scores from a judge that failed its calibration: its rows of the verdict say so, no other row.
    failing = JudgeCalibration(("of", "digits"), (TaskCalibration("fuzz", 0.45, 0.5),))
    save_calibration(RunDir(run).interp("token"), failing)
    flagged = analyze_run(run, AnalysisConfig(bootstrap_samples=50), progress=False)
    readings = {row.metric: row.reading for row in flagged.verdict}
    interp_metrics = {"fuzz_auroc", "detection_auroc", "fuzz_auroc_contextual", "fuzz_auroc_single_token"}
    assert interp_metrics <= set(readings)
    assert {metric for metric, text in readings.items() if text == JUDGE_NOT_CALIBRATED} == {
        metric for metric in readings if metric.startswith(("fuzz_auroc", "detection_auroc"))
    }
    assert any("failed its calibration" in note for note in flagged.notes)


def test_bad_run_directories_raise_user_errors(tmp_path: Path, planted_run: Path):
    with pytest.raises(UserError, match="no SAE under"):
        analyze_run(tmp_path, AnalysisConfig(), progress=False)
    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    shutil.copy(run / "tokens" / "train.safetensors", run / "tokens" / "heldout.safetensors")
    with pytest.raises(UserError, match="does not match"):
        analyze_run(run, AnalysisConfig(), progress=False)
    shutil.copy(planted_run / "tokens" / "heldout.safetensors", run / "tokens" / "heldout.safetensors")
    (run / "interp" / "token").mkdir(parents=True)
    (run / "interp" / "token" / "latents.csv").write_text("variant,latent,fuzz_auroc\ntrained,3,0.7\n")
    with pytest.raises(UserError, match="lacks the column"):
        analyze_run(run, AnalysisConfig(), progress=False)
    with pytest.raises(UserError, match="single_token_threshold"):
        dataclasses.replace(AnalysisConfig(), single_token_threshold=1.5)


@pytest.mark.slow
def test_real_pipeline_run_is_analysed(tmp_path: Path, tiny_run: Path):
    """On a run made by the real pipeline (tiny GPT-NeoX, TopK SAEs): every SAE measured, values in range."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    summary = analyze_run(run, AnalysisConfig(bootstrap_samples=100, min_token_count=5), progress=False)
    variants = {m.variant for m in summary.saes}
    assert variants == {"trained", "rerandomized", "rerandomized_keep_embeddings", "control"}
    for m in summary.saes:
        assert 0 < m.n_alive <= m.d_sae
        assert 0.0 <= m.single_token_fraction <= 1.0 and 0.0 <= m.positional_fraction <= 1.0
        assert m.lookup_ev <= 1.0 and m.sae_ev <= 1.0
    # The control feeds every token fresh noise instead of its embedding: token identity explains less there.
    control = [m for m in summary.saes if m.variant == "control"]
    trained = [m for m in summary.saes if m.variant == "trained"]
    assert max(m.lookup_ev for m in control) < min(m.lookup_ev for m in trained)
    assert {row.variant for row in summary.separation} == variants - {"trained"}
    assert (run / "analysis" / "separation.csv").is_file()
