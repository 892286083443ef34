"""Several models in one run: the [[models]] config, layers as fractions of depth, the run (resume, one model
failing), the plan and the sweep's report."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import tomli_w
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

from randsae import model_sweep
from randsae.cli import main
from randsae.config import dump_config
from randsae.errors import UserError
from randsae.model_sweep import (
    ModelOutcome,
    Sweep,
    build_sweep,
    default_label,
    depth_layers,
    load_experiment,
    load_outcomes,
    run_sweep,
    save_outcomes,
)
from randsae.report import plots
from randsae.report.sweep import gap_points, layer_mean_gap
from randsae.run_dir import RunDir, SAEKey
from tests.helpers import build_tiny_model, tiny_config, tiny_interp_config
from tests.test_outputs_doc import documented


def sweep_data(corpus: Path, models: list, **shared) -> dict:
    """The tiny experiment's shared keys (two variants) with `models` in place of [model]."""
    base = tiny_config(Path("unused"), corpus, variants=("trained", "rerandomized"), interp=tiny_interp_config())
    data = tomllib.loads(dump_config(base))
    del data["model"]
    return {**data, "layers": [0.5, 1.0], "models": models, **shared}


# --- layers as fractions of depth ---


@pytest.mark.parametrize(
    ("fractions", "n_blocks", "expected"),
    [
        ((0.1, 0.35, 0.6), 30, (2, 10, 17)),  # depths 3/30, 11/30 (10.5 rounds up), 18/30
        ((0.5, 1.0), 4, (1, 3)),
        ((0.5, 1.0), 6, (2, 5)),
        ((0.1,), 4, (0,)),  # 0.4 blocks deep: nearest is block 0's output (depth 1/4)
        ((0.1, 0.2, 1.0), 4, (0, 3)),  # 0.1 and 0.2 both fall on block 0: trained once
    ],
)
def test_fractions_resolve_to_the_nearest_block(fractions, n_blocks, expected):
    assert depth_layers(fractions, n_blocks) == expected


def test_a_sweep_config_is_checked_whole(tiny_corpus):
    sweep = build_sweep(sweep_data(tiny_corpus, ["EleutherAI/pythia-70m", {"name": "x/m.gguf", "layers": [1, 2]}]))
    assert [model.label for model in sweep.models] == ["pythia-70m", "m"]
    assert sweep.models[0].fractions == (0.5, 1.0) and sweep.models[1].fractions is None
    assert sweep.models[1].resolve(40).layers == (1, 2)
    assert sweep.models[0].resolve(6).layers == (2, 5)
    own = build_sweep(sweep_data(tiny_corpus, [{"name": "a/b", "set": ["sae.k=2"]}, {"name": "a/c"}]))
    assert [model.config.sae.k for model in own.models] == [2, 4]
    assert tomllib.loads(own.toml)["models"][0]["set"] == ["sae.k=2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": ["a/b", {"name": "c/b"}]}, "two models have the label 'b'"),
        ({"layers": [0.0, 0.5]}, "layers = [0.0, 0.5] is invalid"),
        ({"layers": [0.5, 1.5]}, "fractions of depth in (0, 1]"),
        ({"layers": [1, 0.5]}, "not both"),
        ({"models": [{"name": "a/b", "layers": [2.0]}]}, "models[0].layers = [2.0] is invalid"),
        ({"models": [{"name": "a/b", "depth": 3}]}, "unknown config key 'depth' in [[models]] entry 0"),
        ({"models": [{"name": "a/b", "label": "a/b"}]}, "models[0].label = 'a/b' is invalid"),
        ({"models": [{"name": "a/b", "set": ["layers=[1]"]}]}, "models[0].set changes layers"),
        ({"models": []}, "models = [] is invalid"),
        ({"model": {"name": "a/b"}}, "both [model] and models"),
    ],
)
def test_sweep_config_mistakes(tiny_corpus, change, message):
    data = {**sweep_data(tiny_corpus, ["a/b"]), **change}
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace("]", r"\]")):
        build_sweep(data)


def test_default_labels():
    assert default_label("EleutherAI/pythia-70m", "step143000") == "pythia-70m-step143000"
    assert default_label("embedded", None) == "SmolLM2-135M-Instruct"
    assert default_label("embedded:gemma-3-270m", None) == "gemma-3-270m"
    assert default_label("/models/gemma-3-270m.Q4_K_M.gguf", None) == "gemma-3-270m.Q4_K_M"


# --- the gap against size, from plotted points ---


def test_layer_mean_gap_by_hand():
    trained = [plots.Point(1, 0.9), plots.Point(3, 0.7), plots.Point(5, 0.5)]
    other = [plots.Point(1, 0.4, 0.3, 0.6), plots.Point(3, 0.6, 0.5, 0.7)]  # no layer 5: left out
    gap, low, high = layer_mean_gap(trained, other)
    assert gap == pytest.approx(((0.9 - 0.4) + (0.7 - 0.6)) / 2)
    assert low == pytest.approx(((0.9 - 0.6) + (0.7 - 0.7)) / 2)
    assert high == pytest.approx(((0.9 - 0.3) + (0.7 - 0.5)) / 2)
    assert math.isnan(layer_mean_gap(trained, [plots.Point(1, 0.4)])[1])
    assert layer_mean_gap(trained, [plots.Point(2, 0.4)]) is None


def test_gap_points_skip_dashed_and_trained():
    series = {"trained": [plots.Point(0, 2.0)], "control": [plots.Point(0, 1.5)]}
    panels = {
        "small": [plots.Panel("EV", series), plots.Panel("CE", series, frozenset({"control"}))],
        "big": [plots.Panel("EV", {**series, "control": [plots.Point(0, 2.5)]})],
    }
    gaps = gap_points(panels, {"small": 10, "big": 1000})
    assert list(gaps) == ["EV"] and list(gaps["EV"]) == ["control"]
    assert [(p.size, p.gap) for p in gaps["EV"]["control"]] == [(10, 0.5), (1000, -0.5)]


# --- the run: two tiny models of different sizes and one broken one, through the command line ---


def build_wider_model(folder: Path, hidden_size: int, n_blocks: int) -> Path:
    """The tiny model's tokenizer with a GPT-NeoX of another width and depth (random weights)."""
    build_tiny_model(folder)
    config = GPTNeoXConfig.from_pretrained(folder)
    config.update({"hidden_size": hidden_size, "num_hidden_layers": n_blocks, "intermediate_size": 2 * hidden_size})
    torch.manual_seed(2)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, tiny_corpus):
    tmp = tmp_path_factory.mktemp("sweep")
    small = build_tiny_model(tmp / "small", seed=1)
    large = build_wider_model(tmp / "large", hidden_size=48, n_blocks=6)
    broken = build_tiny_model(tmp / "broken", seed=3)
    (broken / "config.json").write_text('{"model_type": "gpt_neox", ')  # found only when it loads
    models = [{"name": str(small)}, {"name": str(broken)}, {"name": str(large), "set": ["sae.expansion=2"]}]
    config = tmp / "sweep.toml"
    config.write_text(tomli_w.dumps(sweep_data(tiny_corpus, models)))
    out = tmp / "run"
    argv = ["run", "--config", str(config), "--out", str(out), "--quiet", "--skip", "analyze"]
    code = main(argv)
    return out, argv, code, {"small": small, "large": large}


def test_each_model_runs_into_its_own_part(sweep_run):
    out, _, code, folders = sweep_run
    assert code == 2  # the broken model is reported at the end, after the others ran
    run = RunDir(out)
    outcomes = {outcome.label: outcome for outcome in load_outcomes(run)}
    assert [outcomes[label].status for label in ("small", "broken", "large")] == ["done", "failed", "done"]
    assert "could not load model" in outcomes["broken"].error
    assert outcomes["small"].layers == (1, 3) and outcomes["large"].layers == (2, 5)  # 0.5 and 1.0 of 4, 6 blocks
    for label, folder in folders.items():
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert outcomes[label].n_parameters == sum(p.numel() for p in model.parameters())
    assert outcomes["small"].n_parameters < outcomes["large"].n_parameters
    for label, layers, d_sae in (("small", (1, 3), 4 * 32), ("large", (2, 5), 2 * 48)):
        part = run.model_run(label)
        assert part.root == out / "models" / label
        for variant in ("trained", "rerandomized"):
            for layer in layers:
                cfg = json.loads((part.sae(SAEKey(variant, layer)) / "cfg.json").read_text())
                assert cfg["d_sae"] == d_sae
        rows = json.loads(part.metrics_json.read_text())
        assert {(row["variant"], row["layer"]) for row in rows} == {
            (v, layer) for v in ("trained", "rerandomized") for layer in layers
        }
        assert (part.interp("token").table).is_file()
    assert not (out / "models" / "broken" / "saes").exists()
    # The whole run's SAEs, every model's, are found with their model named.
    assert {key.model for key in run.discover_saes()} == {"small", "large"}


def test_models_json_fields_are_documented(sweep_run):
    out, *_ = sweep_run
    records = json.loads((out / "models.json").read_text())["models"]
    assert set(records[0]) == set(documented("`models.json`"))


def test_the_report_has_the_grid_and_the_gap_against_size(sweep_run):
    out, *_ = sweep_run
    page = (out / "report.html").read_text()
    assert 'alt="measurements against layer, one column per model"' in page
    assert 'alt="trained-minus-variant gap against model parameters"' in page
    assert page.count('<h3 id="model-') == 3
    assert "model broken failed" in page
    assert "fuzzing AUROC" in page and "explained variance (pooled)" in page


def test_a_rerun_redoes_nothing_but_the_failed_model(sweep_run, tiny_corpus, capsys):
    out, argv, _, _ = sweep_run
    work = ("tokens", "activations", "saes")  # the tables, tokenizer and timings are rewritten, as in any run
    done = [path for path in (out / "models").rglob("*") if path.is_file() and set(path.parts) & set(work)]
    before = {path: path.stat().st_mtime_ns for path in done}
    assert len(done) > 30
    assert main(argv) == 2
    assert {path: path.stat().st_mtime_ns for path in done} == before
    assert "1 of 3 models failed (broken: could not load model" in capsys.readouterr().err


def test_the_plan_lists_every_model(sweep_run, tmp_path, capsys):
    out, argv, _, folders = sweep_run
    config = Path(argv[2])
    data = tomllib.loads(config.read_text())
    data["models"] = [{"name": str(folders["small"])}, {"name": str(folders["large"])}]
    (tmp_path / "good.toml").write_text(tomli_w.dumps(data))
    assert main(["run", "--config", str(tmp_path / "good.toml"), "--out", str(tmp_path / "new"), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "model small:" in text and "layers [1, 3]" in text and "model large:" in text and "layers [2, 5]" in text
    assert "all 2 models:" in text
    assert not (tmp_path / "new").exists()


CONFIGS = Path(__file__).parents[1] / "configs"


def test_the_shipped_sweeps_load():
    suite = load_experiment(CONFIGS / "pythia-suite.toml")
    assert isinstance(suite, Sweep)
    assert [model.label for model in suite.models] == [
        f"pythia-{size}" for size in ("70m", "160m", "410m", "1b", "6.9b")
    ]
    assert [len(model.config.layers) for model in suite.models] == [6, 12, 12, 8, 8]
    assert all("step0" in model.config.variants for model in suite.models)
    offline = load_experiment(CONFIGS / "size-sweep.toml")
    assert isinstance(offline, Sweep)
    assert [model.label for model in offline.models] == ["SmolLM2-135M-Instruct", "gemma-3-270m"]
    assert [model.resolve(n).layers for model, n in zip(offline.models, (30, 18), strict=True)] == [(4, 14), (2, 8)]
    assert [model.config.eval.batch_windows for model in offline.models] == [8, 2]


def test_the_later_stages_run_on_every_model(sweep_run, capsys):
    out, *_ = sweep_run
    assert main(["analyze", str(out), "--quiet"]) == 0
    assert "model small" in capsys.readouterr().out
    for label in ("small", "large"):
        assert RunDir(out).model_run(label).verdict_json.is_file()
    assert main(["report", str(out), "--quiet"]) == 0
    page = (out / "report.html").read_text()
    assert 'id="verdict-small"' in page and 'id="verdict-large"' in page
    assert "single-token latent fraction" in page  # the analysis' measurements join the grid


def test_an_interrupted_rerun_keeps_the_outcomes_it_did_not_reach(tmp_path, tiny_corpus, monkeypatch):
    sweep = build_sweep(sweep_data(tiny_corpus, ["a/one", "a/two"]))
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text(sweep.toml)
    save_outcomes(run, [ModelOutcome("one", "a/one", "done", 10), ModelOutcome("two", "a/two", "done", 20)])

    def load(model, device, progress):
        if model.label == "two":
            raise KeyboardInterrupt
        raise UserError("its folder is gone", "Restore it")

    monkeypatch.setattr(model_sweep, "load_sweep_model", load)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, run, progress=False)
    outcomes = load_outcomes(run)
    assert [(o.label, o.status, o.n_parameters) for o in outcomes] == [("one", "failed", None), ("two", "done", 20)]
    assert outcomes[0].error == "its folder is gone. Restore it"
