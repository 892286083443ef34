"""The analysis of a replicated run: every replicate measured on its own, values averaged over replicates,
spread reported, and the verdict's intervals only where enough units and replicates stand behind them."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from randsae.analysis import AnalysisConfig, analyze_run
from randsae.analysis.replicates import mean_interval, replicate_spread
from randsae.analysis.results import load_analysis
from randsae.config import ReplicatesConfig
from randsae.experiment import run_pipeline, sae_keys
from randsae.interp import interpret_run
from randsae.metrics.results import save_metrics
from randsae.report import write_report
from randsae.run_dir import RunDir, SAEKey
from randsae.sae.base import load_sae
from tests.helpers import (
    STRUCTURED,
    TOKEN_ONLY,
    _report_metrics_rows,
    build_analysis_run,
    read_tables,
    tiny_config,
    tiny_interp_config,
)

TRAINED = [SAEKey("trained", 0, sae_seed=s) for s in range(3)]
CONTROL = [SAEKey("control", 0, variant_seed=d, sae_seed=s) for d in range(2) for s in range(3)]


def test_mean_interval_is_the_t_interval_from_three_values():
    values = np.array([0.2, 0.25, 0.4, 0.31])
    expected = stats.t.interval(0.95, 3, loc=values.mean(), scale=stats.sem(values))
    assert mean_interval(values) == pytest.approx(expected)
    assert all(math.isnan(v) for v in mean_interval(values[:2]))


def _replicate(root: Path) -> Path:
    """Turn the planted run's one SAE per variant into replicates: trained SAE seeds 0-2, control draws 0-1
    (activation caches copied) x SAE seeds 0-2; every replicate's encoder perturbed by its own noise."""
    run = RunDir(root)
    for draw in range(2):
        shutil.copytree(root / "activations" / "control", root / f"activations/control-draw{draw}")
    shutil.rmtree(root / "activations" / "control")
    for variant, keys in (("trained", TRAINED), ("control", CONTROL)):
        source = root / "saes" / variant / "layer0"
        sae = load_sae(source)
        for index, key in enumerate(keys):
            with torch.no_grad():
                noise = torch.from_numpy(np.random.default_rng(index).normal(scale=0.05, size=sae.W_enc.shape))
                copy = load_sae(source)
                copy.W_enc.add_(noise.to(copy.W_enc.dtype))
            copy.save(run.sae(key))
        for path in source.iterdir():
            if path.is_file():
                path.unlink()
    shutil.rmtree(root / "saes" / "control")
    interp = root / "interp" / "token"
    interp.mkdir(parents=True)
    with open(interp / "latents.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "layer", "module", "latent", "fuzz_auroc", "detection_auroc"])
        for key in TRAINED + CONTROL:  # three scored latents per SAE: too few units for an interval
            for latent in range(3):
                writer.writerow([key.variant, 0, key.module, latent, 0.8 if key.variant == "trained" else 0.6, 0.7])
    return root


@pytest.fixture(scope="module")
def replicated(tmp_path_factory) -> Path:
    root = build_analysis_run(
        tmp_path_factory.mktemp("replicated"), {"trained": STRUCTURED, "control": TOKEN_ONLY}, layers=(0,)
    )
    return _replicate(root)


@pytest.fixture(scope="module")
def summary(replicated: Path):
    return analyze_run(replicated, AnalysisConfig(bootstrap_samples=200), progress=False)


def test_every_replicate_is_measured_on_its_own(replicated: Path, summary):
    assert RunDir(replicated).discover_saes() == TRAINED + CONTROL
    keys = [SAEKey(m.variant, m.layer, variant_seed=m.variant_seed, sae_seed=m.sae_seed) for m in summary.saes]
    assert keys == TRAINED + CONTROL
    assert len({m.sae_ev for m in summary.saes}) == 9, "each replicate has its own value"
    assert sorted(p.name for p in (replicated / "analysis" / "parts").iterdir()) == sorted(
        f"{key.module}.npz" for key in TRAINED + CONTROL
    )
    with open(replicated / "analysis" / "latents.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["variant"], r["variant_seed"], r["sae_seed"]) for r in rows} == {
        ("trained", "", "0"),
        ("trained", "", "1"),
        ("trained", "", "2"),
        *(("control", str(d), str(s)) for d in range(2) for s in range(3)),
    }
    trained = [m for m in summary.saes if m.variant == "trained"]
    assert all(
        m.fuzz_auroc == pytest.approx(0.8) and m.n_interp_single_token + m.n_interp_contextual == 3 for m in trained
    )


def test_values_are_replicate_means_with_their_spread(summary):
    assert not any("not resampled" in note for note in summary.notes)  # 3 and 6 replicates: both resampled
    rows = {(r.metric, r.layer): r for r in summary.separation}
    trained = [m for m in summary.saes if m.variant == "trained"]
    control = [m for m in summary.saes if m.variant == "control"]
    sae_ev = rows[("sae_ev", "0")]
    assert sae_ev.trained == pytest.approx(np.mean([m.sae_ev for m in trained]))
    assert sae_ev.other == pytest.approx(np.mean([m.sae_ev for m in control]))
    assert (sae_ev.n_trained_replicates, sae_ev.n_other_replicates) == (3, 6)
    assert replicate_spread(summary.saes) == list(summary.replicates)
    spread = {(r.metric, r.variant): r for r in summary.replicates}
    ev = spread[("sae_ev", "trained")]
    values = np.array([m.sae_ev for m in trained])
    assert (ev.n, ev.minimum, ev.maximum) == (3, values.min(), values.max())
    assert (ev.ci_low, ev.ci_high) == pytest.approx(mean_interval(values))
    assert ev.ci_low < ev.mean < ev.ci_high


def test_verdict_has_intervals_only_where_units_suffice(replicated: Path, summary):
    verdict = {row.metric: row for row in summary.verdict}
    fuzz = verdict["fuzz_auroc"]  # 3 scored latents per SAE
    assert fuzz.difference == pytest.approx(0.2) and fuzz.n_units == 3
    assert math.isnan(fuzz.ci_low) and fuzz.reading == "no interval (too few units)"
    positional = verdict["positional_fraction"]
    assert positional.n_units == 24 and positional.ci_low > 0 and positional.reading == "separates at every layer"
    written = json.loads((replicated / "analysis" / "verdict.json").read_text())
    by_metric = {row["metric"]: row for row in written["verdict"]}
    assert by_metric["fuzz_auroc"]["ci_low"] is None and by_metric["fuzz_auroc"]["n_units"] == 3
    assert by_metric["positional_fraction"]["n_other_replicates"] == 6
    loaded = load_analysis(RunDir(replicated))
    assert loaded.verdict[0].metric == summary.verdict[0].metric and loaded.replicates == summary.replicates


@pytest.mark.slow
def test_a_replicated_pipeline_run_is_analysed_per_replicate(tmp_path, tiny_model_dir, tiny_corpus):
    """The real pipeline with 2 SAE seeds and 2 draws: no replicate overwrites another in the analysis."""
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained", "control"), layers=(1,))
    cfg = dataclasses.replace(cfg, replicates=ReplicatesConfig(sae_seeds=2, variant_seeds=2))
    run_pipeline(cfg, tmp_path, progress=False)
    summary = analyze_run(tmp_path, AnalysisConfig(bootstrap_samples=50, min_token_count=5), progress=False)
    keys = [SAEKey(m.variant, m.layer, variant_seed=m.variant_seed, sae_seed=m.sae_seed) for m in summary.saes]
    assert keys == sae_keys(cfg) and len(set(keys)) == 2 + 4
    assert len({m.sae_ev for m in summary.saes}) == 6
    rows = [row for row in summary.separation if row.layer == "1"]
    assert {(row.n_trained_replicates, row.n_other_replicates) for row in rows} == {(2, 4)}
    assert {(r.variant, r.n) for r in summary.replicates} == {("trained", 2), ("control", 4)}
    assert all(math.isnan(r.ci_low) for r in summary.replicates if r.n < 3)
    assert all(not math.isnan(r.ci_low) for r in summary.replicates if r.variant == "control" and r.minimum < r.maximum)
    assert (tmp_path / "analysis" / "verdict.json").is_file()
    assert any("2 replicates is averaged, not resampled" in note for note in summary.notes)

    interpret_run(tmp_path, tiny_interp_config(), progress=False)
    report = write_report(tmp_path, progress=False).read_text()
    assert "first replicate (random draw 0, SAE seed 0)" in report
    folders = {path.name for path in (tmp_path / "dashboards").iterdir() if path.is_dir()}
    assert folders == {"trained", "control"} and list((tmp_path / "dashboards").glob("*/*/*.html")), folders


def test_the_report_shows_the_replicates_and_their_spread(tmp_path, replicated: Path, summary):
    run = tmp_path / "run"
    shutil.copytree(replicated, run)
    shutil.rmtree(run / "interp")  # the fixture's interp table has no interp.json behind it
    rows = _report_metrics_rows(["trained"], [0], 24, np.random.default_rng(0))
    save_metrics(
        RunDir(run),
        [
            dataclasses.replace(rows[0], variant=key.variant, variant_seed=key.variant_seed, sae_seed=key.sae_seed)
            for key in TRAINED + CONTROL
        ],
    )
    tables = read_tables(write_report(run, progress=False).read_text())
    assert tables["verdict"][0][:2] == ["measurement", "variant"] and len(tables["verdict"]) == 1 + len(summary.verdict)
    assert {cells[tables["verdict"][0].index("replicates")] for cells in tables["verdict"][1:]} == {"3 / 6"}
    spread_header, *spread = tables["replicates"]
    assert len(spread) == len(summary.replicates)
    assert {(r[0], r[1], r[spread_header.index("replicates")]) for r in spread if r[0] == "sae_ev"} == {
        ("sae_ev", "trained", "3"),
        ("sae_ev", "control", "6"),
    }
    header, *analysed = tables["analysis"]
    assert [r[header.index("replicate")] for r in analysed][:3] == ["seed0", "seed1", "seed2"]
    assert "draw1 seed2" in [r[header.index("replicate")] for r in analysed]
