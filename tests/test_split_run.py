"""A run split across jobs (`randsae run --variants/--layers`, a SLURM array) into one run directory: each job
writes only its own part, and together they give what one job running the whole matrix gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import randsae
from randsae.cli import main
from randsae.config import dump_config
from randsae.experiment import run_pipeline
from randsae.metrics.results import load_metrics
from randsae.run_dir import RunDir
from tests.helpers import tiny_config

FIRST, SECOND = ("trained", "control"), ("rerandomized", "rerandomized_keep_embeddings")


def test_jobs_of_disjoint_variants_give_the_whole_runs_metrics(tmp_path, tiny_run, tiny_model_dir, tiny_corpus, capsys):
    cfg = tiny_config(tiny_model_dir, tiny_corpus)
    run = RunDir(tmp_path / "split")
    first = run_pipeline(cfg, run, progress=False, variants=FIRST)
    assert [(row.variant, row.layer) for row in first] == [(v, layer) for v in FIRST for layer in cfg.layers]
    assert run.missing_saes() == (
        "4 of 8 SAEs not trained yet: rerandomized layer 1, rerandomized layer 3, "
        "rerandomized_keep_embeddings layer 1, rerandomized_keep_embeddings layer 3"
    )
    assert main(["report", str(run.root), "--quiet"]) == 0, "the later stages read the SAEs there are"
    assert run.missing_saes() in capsys.readouterr().out
    run_pipeline(cfg, run, progress=False, layers=(3,), variants=SECOND)
    run_pipeline(cfg, run, progress=False, layers=(1,))
    assert run.missing_saes() is None
    whole = RunDir(tiny_run)
    assert load_metrics(run) == load_metrics(whole)
    assert run.metrics_json.read_bytes() == whole.metrics_json.read_bytes()
    assert run.metrics_csv.read_bytes() == whole.metrics_csv.read_bytes()
    assert run.config.read_text() == whole.config.read_text(), "every job writes the whole matrix's config"


def test_two_jobs_at_once_into_a_fresh_run_directory(tmp_path, tiny_run, tiny_model_dir, tiny_corpus):
    config = tmp_path / "experiment.toml"
    config.write_text(dump_config(tiny_config(tiny_model_dir, tiny_corpus)))
    out = tmp_path / "split"
    env = {**os.environ, "PYTHONPATH": str(Path(randsae.__file__).parents[1])}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "randsae.cli", "run", "--config", str(config), "--out", str(out), "--quiet"]
            + ["--variants", ",".join(variants)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for variants in (FIRST, SECOND)
    ]
    for job in jobs:
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 0, output
    whole = RunDir(tiny_run)
    assert load_metrics(RunDir(out)) == load_metrics(whole)
    assert RunDir(out).metrics_json.read_bytes() == whole.metrics_json.read_bytes()
    assert RunDir(out).tokens("train").read_bytes() == whole.tokens("train").read_bytes()
    assert not list(out.rglob("*.tmp")), "no writer's temporary file is left"
