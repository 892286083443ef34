"""The report of a run made by the real pipeline (conftest's `tiny_run`), after the real interp and analysis
stages: the formats the report reads are the ones `randsae run` writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from randsae.analysis.config import AnalysisConfig
from randsae.analysis.stage import analyze_run
from randsae.interp.stage import interpret_run
from randsae.report import write_report
from tests.helpers import read_tables, tiny_interp_config


@pytest.mark.slow
def test_report_of_a_real_pipeline_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    shutil.rmtree(run / "interp", ignore_errors=True)
    shutil.rmtree(run / "analysis", ignore_errors=True)
    interpret_run(
        run,
        tiny_interp_config(),
        progress=False,
    )
    analyze_run(run, AnalysisConfig(bootstrap_samples=20, window_tokens=16), progress=False)
    report = write_report(run, progress=False).read_text()

    config = (run / "config.toml").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(read_tables(report)["quality"]) == 1 + len(metrics)
    assert len(re.findall(r'<img class="plot" src="data:image/png;base64,', report)) == 5  # with the learning curves
    assert "has a held-out learning curve" not in report
    assert "is missing" not in report and "No auto-interpretability" not in report
    for row in metrics:
        assert row["variant"] in report
    name = re.search(r'^name = "(.*)"$', config, re.MULTILINE).group(1)
    assert f"randsae report: {Path(name).name}" in report  # a model folder is named by its folder name
    assert re.search(r"train_tokens = \d+", report) and "prepare" in report  # [tokens] and timings.json
    pages = list(run.glob("dashboards/*/layer*/latent*.html"))
    assert len(pages) == 3 * len(metrics)
    logits = json.loads(pages[0].with_suffix(".json").read_text())["pos_str"]
    assert len(logits) == 10  # the pipeline saved the unembedding
