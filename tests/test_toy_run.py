"""run_toy end to end at a tiny size: outputs, resume, config guard and worker processes."""

import csv
import json
import math

import pytest

import randsae.toy.run as toy_run
from randsae.errors import UserError
from randsae.toy import ToyConfig, run_toy
from randsae.toy.results import ToyRow

TINY = ToyConfig(
    n_features=16,
    n_dims=8,
    mean_active=2.0,
    n_samples=600,
    test_fraction=0.2,
    networks=("mlp2", "transformer_block"),
    l1_log10_min=-1.0,
    l1_log10_max=1.0,
    l1_count=3,
    latent_counts=(16,),
    epochs=1,
    batch_size=64,
    workers=1,
)


def strict_json(text):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def test_run_writes_csv_json_and_a_self_contained_report(tmp_path):
    result = run_toy(TINY, tmp_path, progress=False)
    # 2 kinds of data × (untouched + 2 networks) × 3 λ × 1 width × 1 seed
    assert len(result.rows) == 18
    assert {(row.data, row.network) for row in result.rows} == {
        (data, network) for data in ("toy", "gaussian") for network in ("none", "mlp2", "transformer_block")
    }
    for row in result.rows:
        assert row.explained_variance == pytest.approx(1 - row.fvu)
        assert -1 <= row.mmcs <= 1 and 0 <= row.dead_fraction <= 1 and row.l0 <= 16

    with open(tmp_path / "toy_results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 18 and float(table[0]["mmcs"]) == pytest.approx(result.rows[0].mmcs)

    document = strict_json((tmp_path / "toy_results.json").read_text())
    assert document["config"]["networks"] == ["mlp2", "transformer_block"]
    assert len(document["rows"]) == 18
    assert len(document["recovery"]) == 6 and len(document["front_gaps"]) == 3 * 4

    page = (tmp_path / "toy_report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert 'src="http' not in page and "<script" not in page
    assert not list(tmp_path.glob("*.tmp")) and not list((tmp_path / "toy_parts").glob("*.tmp"))
    summary = result.summary()
    assert str(tmp_path / "toy_report.html") in summary and "toy/mlp2/16" in summary and "18 SAEs" in summary


def test_recovery_summary_takes_the_best_lambda_of_the_seed_mean():
    rows = [
        ToyRow("toy", "none", 8, seed, l1, mmcs, 0.5, 0.5, 1, 1, 1, 0.5, 0)
        for seed, l1, mmcs in [(0, 0.1, 0.9), (1, 0.1, 0.3), (0, 1.0, 0.7), (1, 1.0, 0.7)]
    ]
    (summary,) = toy_run.summarize_recovery(rows)
    assert summary.best_l1_coefficient == 1.0 and summary.best_mmcs == pytest.approx(0.7)


def test_rerun_resumes_from_finished_sweeps(tmp_path, monkeypatch):
    first = run_toy(TINY, tmp_path, progress=False)
    trained = []
    original = toy_run.train_and_score

    def counting(dataset, d_sae, seed, config, progress):
        trained.append((dataset.data, dataset.network))
        return original(dataset, d_sae, seed, config, progress)

    monkeypatch.setattr(toy_run, "train_and_score", counting)
    again = run_toy(TINY, tmp_path, progress=False)
    assert trained == [] and again.rows == first.rows
    (tmp_path / "toy_parts" / "gaussian-mlp2-w16-s0.json").unlink()
    third = run_toy(TINY, tmp_path, progress=False)
    assert trained == [("gaussian", "mlp2")]
    assert [row.data for row in third.rows] == [row.data for row in first.rows]


def test_other_settings_in_the_same_directory_are_refused(tmp_path):
    run_toy(TINY, tmp_path, progress=False)
    with pytest.raises(UserError, match="other settings"):
        run_toy(ToyConfig(**{**TINY.__dict__, "epochs": 2}), tmp_path, progress=False)


@pytest.mark.slow
def test_worker_processes_give_the_same_results(tmp_path):
    alone = run_toy(TINY, tmp_path / "alone", progress=False)
    pooled = run_toy(ToyConfig(**{**TINY.__dict__, "workers": 2}), tmp_path / "pooled", progress=False)
    assert [(row.data, row.network, row.l1_coefficient) for row in pooled.rows] == [
        (row.data, row.network, row.l1_coefficient) for row in alone.rows
    ]
    for a, b in zip(alone.rows, pooled.rows, strict=True):
        assert math.isclose(a.mmcs, b.mmcs, rel_tol=1e-3, abs_tol=1e-4)
        assert math.isclose(a.fvu, b.fvu, rel_tol=1e-3, abs_tol=1e-4)
