"""report.html against the run it describes: the tables hold the data's numbers, every figure is a real PNG,
the header names what was run, and missing or broken inputs give notes or clear errors."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

from randsae.errors import UserError
from randsae.report import plots, write_report
from randsae.report.palette import KNOWN_VARIANT_COLORS, variant_colors
from randsae.report.plots import roc_curve
from tests.helpers import build_report_run, read_tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = build_report_run(tmp_path_factory.mktemp("content"), variants=("trained", "step0", "control"), layers=(0, 2))
    write_report(run, progress=False)
    return run


@pytest.fixture(scope="module")
def report(run):
    return (run / "report.html").read_text()


def test_every_figure_is_a_nonempty_png(report):
    images = re.findall(r'<img class="plot" src="data:image/png;base64,([^"]+)"', report)
    assert len(images) == 4
    for data in images:
        png = base64.b64decode(data)
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5000


def test_quality_table_rows_match_metrics_json(run, report):
    table = read_tables(report)["quality"]
    header, rows = table[0], table[1:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(rows) == len(metrics)
    by_key = {(row["variant"], str(row["layer"])): row for row in metrics}
    for cells in rows:
        source = by_key[(cells[0], cells[1])]
        shown = dict(zip(header, cells, strict=True))
        assert float(shown["EV pooled"]) == pytest.approx(source["explained_variance_pooled"], abs=5e-4)
        assert float(shown["cosine"]) == pytest.approx(source["cosine"], abs=5e-4)
        assert shown["CE meaningful"] == ("yes" if source["meaningful_downstream"] else "no")
        flag = "" if source["meaningful_downstream"] else "*"
        assert shown["CE score"] == f"{source['ce_loss_score']:.3f}{flag}"
        assert shown["KL score"] == f"{source['kl_score']:.3f}{flag}"
    assert [cells[0] for cells in rows] == ["trained"] * 2 + ["step0"] * 2 + ["control"] * 2


def test_ce_and_kl_scores_of_every_variant_but_trained_are_marked_not_meaningful(run, report):
    """The control feeds noise instead of token embeddings: its CE score is no language model's either."""
    from randsae.metrics.results import NOT_MEANINGFUL, load_metrics
    from randsae.report.report import metric_panels
    from randsae.report.run_inputs import read_run
    from randsae.run_dir import RunDir

    rows = load_metrics(RunDir(run))
    assert {row.variant for row in rows if not row.meaningful_downstream} == {"step0", "control"}
    assert report.count(NOT_MEANINGFUL) == 1
    (ce_panel,) = [panel for panel in metric_panels(read_run(RunDir(run))) if panel.title == "CE-loss score"]
    assert ce_panel.dashed == {"step0", "control"} and "not meaningful" in ce_panel.note


def test_interp_and_separation_tables_match_their_stage_outputs(run, report):
    tables = read_tables(report)
    interp = json.loads((run / "interp" / "token" / "interp.json").read_text())["saes"]
    header, rows = tables["interp"][0], tables["interp"][1:]
    shown = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    for sae in interp:
        cells = shown[(sae["variant"], str(sae["layer"]))]
        assert float(cells["fuzz AUROC"]) == pytest.approx(sae["fuzz"]["auroc"], abs=5e-4)
        assert float(cells["detect CI high"]) == pytest.approx(sae["detection"]["auroc_high"], abs=5e-4)
        assert int(cells["sampled"]) == sae["n_sampled"]
    separation = json.loads((run / "analysis" / "analysis.json").read_text())["separation"]
    pooled = [row for row in separation if row["layer"] == "all"]
    assert [(r[0], r[1]) for r in tables["separation"][1:]] == [(row["metric"], row["variant"]) for row in pooled]


def test_verdict_table_comes_first_and_matches_verdict_json(run, report):
    verdict = json.loads((run / "analysis" / "verdict.json").read_text())["verdict"]
    table = read_tables(report)["verdict"]
    header, rows = table[0], table[1:]
    assert [(r[0], r[1]) for r in rows] == [(row["metric"], row["variant"]) for row in verdict]
    for cells, row in zip(rows, verdict, strict=True):
        shown = dict(zip(header, cells, strict=True))
        assert shown["reading"] == row["reading"] and int(shown["paired units"]) == row["n_units"]
        assert shown["replicates"] == f"{row['n_trained_replicates']} / {row['n_other_replicates']}"
    assert report.index('id="verdict"') < report.index('id="run"') < report.index('id="figure2"')
    assert 'id="replicates"' not in report  # an unreplicated run has no spread table


def test_header_names_model_judge_software_and_stage_times(report):
    assert "synthetic/tiny-model" in report and "revision main" in report
    assert "LLM-free token judge" in report  # the warning box
    assert re.search(r"torch [0-9.]", report) and re.search(r"matplotlib [0-9.]", report)
    assert "harvest 12.0 s" in report and "total 43.8 s" in report
    assert "2,048" in report  # held-out tokens: 32 windows x 64
    assert "context_size = 64, train_tokens = 2048" in report and "expansion = 4, k = 4" in report


def test_each_variant_has_one_colour_everywhere(run, report):
    colors = variant_colors(("trained", "step0", "control"))
    assert colors["trained"] == KNOWN_VARIANT_COLORS["trained"]
    assert len(set(colors.values())) == 3
    assert variant_colors(("mine", "trained", "other"))["trained"] == colors["trained"]
    page = next((run / "dashboards" / "control" / "layer2").glob("latent*.html")).read_text()
    for text in (report, page):
        assert f"background:{colors['control']}" in text


def test_roc_auroc_matches_scikit_learn_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding makes many ties
    curve = roc_curve(labels, scores)
    assert curve.auroc == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert curve.false_positive_rate[0] == 0 and curve.true_positive_rate[-1] == 1


def test_missing_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="metrics.json"):
        write_report(tmp_path, progress=False)
    row = tmp_path / "saes" / "trained" / "layer1" / "metrics.json"
    row.parent.mkdir(parents=True)
    row.write_text("{not json")
    with pytest.raises(UserError, match="metrics.json is damaged"):
        write_report(tmp_path, progress=False)
    row.write_text('{"variant": "trained"}')
    with pytest.raises(UserError, match="does not hold a metrics row"):
        write_report(tmp_path, progress=False)
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nowhere", progress=False)


def test_a_run_without_interp_or_analysis_gets_notes_not_a_crash(tmp_path):
    run = build_report_run(tmp_path, variants=("trained", "control"), layers=(1,), interp=False, analysis=False)
    report = write_report(run, progress=False).read_text()
    assert "No auto-interpretability results" in report and "No separation analysis" in report
    tables = read_tables(report)
    assert "interp" not in tables and "separation" not in tables and len(tables["quality"]) == 3
    assert len(re.findall(r'<img class="plot"', report)) == 1  # only the metrics-by-layer grid
    assert "has a held-out learning curve" in report  # the synthetic SAEs have no training.json
    assert not list((run / "dashboards").glob("*/layer*/latent*.html"))


def test_rewriting_the_report_leaves_no_stale_dashboard(run):
    stale = run / "dashboards" / "trained" / "layer0" / "latent999999.html"
    stale.write_text("old")
    write_report(run, progress=False)
    assert not stale.exists()
    assert (run / "dashboards" / "index.html").is_file()
    assert (run / "report.html").read_text().rstrip().endswith("</html>")


def test_hard_answer_aurocs_and_failed_examples_are_flagged(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("dashboards", "activations"))
    summary = json.loads((copy / "interp" / "token" / "interp.json").read_text())
    summary["saes"][0]["fuzz"]["probability_source"] = "hard_answers"
    summary["saes"][1]["detection"]["n_failed"] = 3
    (copy / "interp" / "token" / "interp.json").write_text(json.dumps(summary))
    report = write_report(copy, progress=False).read_text()
    assert "no log-probabilities" in report and "hard_answers" in report
    assert re.search(r"3 of \d+ judged examples failed", report)
    assert "no log-probabilities" not in (run / "report.html").read_text()


def test_pages_load_nothing_from_outside(run, report):
    pages = [report, *(path.read_text() for path in list(run.glob("dashboards/**/*.html"))[:50])]
    for page in pages:
        assert not re.search(r'(src|href)="(https?:)?//', page)
        assert "<link" not in page and "<script src" not in page


def test_replicates_plot_as_their_mean_with_a_min_max_bar():
    from collections import namedtuple
    from operator import attrgetter

    from randsae.report.report import _series

    record = namedtuple("record", "variant layer value")
    rows = [record("trained", 0, 1.0), record("trained", 0, 4.0), record("trained", 1, 2.0)]
    series = _series(rows, attrgetter("value"))
    replicated, single = series["trained"]
    assert tuple(replicated) == (0, 2.5, 1.0, 4.0)
    assert (single.layer, single.value) == (1, 2.0) and np.isnan(single.low) and np.isnan(single.high)


def test_learning_curves_are_drawn_per_layer_one_line_per_sae(monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "to_data_uri", lambda figure: drawn.append(figure) or "data:")
    colors = variant_colors(["trained", "control"])
    curves = {
        3: [
            plots.LearningCurve("trained", [100, 200], [0.5, 0.7]),
            plots.LearningCurve("control", [100, 200], [0.2, 0.3]),
            plots.LearningCurve("control", [100, 200], [0.25, 0.35]),  # a second replicate: thin lines
        ],
        1: [plots.LearningCurve("trained", [100, 200], [0.4, 0.6])],
    }
    plots.learning_curves(curves, colors)
    first, second = drawn[0].axes[:2]
    assert first.get_title() == "layer 1" and second.get_title() == "layer 3"
    lines = [line for line in second.get_lines() if len(line.get_xdata())]
    assert [list(line.get_ydata()) for line in lines] == [[0.5, 0.7], [0.2, 0.3], [0.25, 0.35]]
    assert [line.get_linewidth() for line in lines] == [1.5, 0.8, 0.8]
    assert lines[1].get_color() == colors["control"] and list(lines[0].get_xdata()) == [100, 200]


def test_the_report_draws_the_learning_curves_of_training_json(tmp_path):
    run = build_report_run(tmp_path, variants=("trained", "control"), layers=(1,), interp=False, analysis=False)
    curve = [
        {"step": 1, "tokens": 256, "explained_variance": 0.4},
        {"step": 2, "tokens": 512, "explained_variance": 0.6},
    ]
    for variant in ("trained", "control"):
        (run / "saes" / variant / "layer1" / "training.json").write_text(json.dumps({"heldout_curve": curve}))
    report = write_report(run, progress=False).read_text()
    assert len(re.findall(r'<img class="plot"', report)) == 2 and "held-out explained variance against" in report
    assert "has a held-out learning curve" not in report
