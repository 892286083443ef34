"""Several SAE shapes in one run: list-valued [sae] keys, the cross product per variant and layer, shared
activations, resume, bad input and the report's verdict per shape."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w

from randsae.cli import main
from randsae.config import ExperimentConfig, dump_config
from randsae.errors import UserError
from randsae.model_sweep import load_experiment
from randsae.run_dir import RunDir, SAEKey
from randsae.sae_sweep import ShapeSweep, build_shape_sweep
from tests.helpers import tiny_config, tiny_interp_config


def experiment_data(corpus: Path, model: Path | str = "unused", **sae) -> dict:
    """The tiny experiment (trained and rerandomized, layer 3) as TOML tables, with `sae` as its [sae] table."""
    base = tiny_config(
        Path(model), corpus, layers=(3,), variants=("trained", "rerandomized"), interp=tiny_interp_config()
    )
    return {**tomllib.loads(dump_config(base)), "sae": sae}


# --- the config ---


def test_the_cross_product_gives_each_architecture_its_own_sparsity(tiny_corpus):
    data = experiment_data(
        tiny_corpus, architecture=["topk", "jumprelu"], expansion=[2, 4], k=[4, 8], l0_coefficient=0.01
    )
    sweep = build_shape_sweep(data)
    shapes = {shape.label: shape.config.sae for shape in sweep.shapes}
    assert list(shapes) == ["topk-x2-k4", "topk-x2-k8", "topk-x4-k4", "topk-x4-k8", "jumprelu-x2", "jumprelu-x4"]
    assert (shapes["topk-x4-k8"].expansion, shapes["topk-x4-k8"].k, shapes["topk-x4-k8"].l0_coefficient) == (
        4,
        8,
        None,
    )
    assert (shapes["jumprelu-x2"].k, shapes["jumprelu-x2"].l0_coefficient) == (None, 0.01)
    # Every key but [sae] is the config's own in every shape.
    assert all(shape.config.tokens == sweep.shapes[0].config.tokens for shape in sweep.shapes)


def test_one_list_labels_by_that_key_only_and_unset_keys_take_their_defaults(tiny_corpus):
    sweep = build_shape_sweep(experiment_data(tiny_corpus, architecture=["topk", "batchtopk", "relu_l1"]))
    assert [shape.label for shape in sweep.shapes] == ["topk", "batchtopk", "relu_l1"]
    assert [shape.config.sae.expansion for shape in sweep.shapes] == [64, 64, 64]
    assert sweep.shapes[2].config.sae.l1_coefficient == 5.0


def test_a_matryoshka_sweep_over_expansions_gives_each_its_own_doubling_groups(tiny_corpus):
    sweep = build_shape_sweep(experiment_data(tiny_corpus, architecture="matryoshka_batchtopk", expansion=[2, 8]))
    assert [shape.config.sae.matryoshka_groups for shape in sweep.shapes] == [(1, 1), (1, 1, 2, 4)]


def test_a_config_without_lists_is_one_experiment(tiny_corpus, tmp_path):
    path = tmp_path / "one.toml"
    path.write_text(tomli_w.dumps(experiment_data(tiny_corpus, expansion=4, k=4)))
    assert isinstance(load_experiment(path), ExperimentConfig)
    assert isinstance(load_experiment(path, ["sae.k=[2, 4]"]), ShapeSweep)


@pytest.mark.parametrize(
    ("sae", "message"),
    [
        ({"architecture": ["jumprelu", "relu_l1"], "k": [4, 8]}, "sae.k is set, but no architecture of the sweep"),
        ({"expansion": [2, 2]}, "sae.expansion = [2, 2] is invalid"),
        ({"k": []}, "sae.k = [] is invalid"),
        ({"architecture": ["topk", "topk2"]}, "SAE shape topk2: sae.architecture = 'topk2' is invalid"),
        (
            {"architecture": "matryoshka_batchtopk", "expansion": [4, 8], "matryoshka_groups": [1, 3]},
            "SAE shape matryoshka_batchtopk-x8: sae.matryoshka_groups = [1, 3] is invalid",
        ),
        ({"k": [4, "8"]}, "SAE shape topk-k8: config key 'sae.k' has the wrong type"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_shape(tiny_corpus, sae, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_shape_sweep(experiment_data(tiny_corpus, **sae))


def test_a_shape_sweep_with_several_models_is_refused(tmp_path, tiny_corpus):
    data = experiment_data(tiny_corpus, k=[4, 8])
    del data["model"]
    path = tmp_path / "both.toml"
    path.write_text(tomli_w.dumps({**data, "models": ["embedded"]}))
    with pytest.raises(UserError, match="not taken with \\[\\[models\\]\\]"):
        load_experiment(path)


def test_the_shipped_architecture_sweeps_hold_the_papers_shapes():
    configs = Path(__file__).parents[1] / "configs"
    reduced = load_experiment(configs / "architectures.toml")
    assert isinstance(reduced, ShapeSweep)
    assert [s.label for s in reduced.shapes if s.label.startswith("topk")] == [
        f"topk-x{x}-k{k}" for x in (2, 8, 16) for k in (4, 32)
    ]  # topk-x2-k4 is the paper's tiny SAE (Fig. 19)
    paper = load_experiment(configs / "pythia-architectures.toml")
    assert isinstance(paper, ShapeSweep)
    grid = {(s.config.sae.expansion, s.config.sae.k) for s in paper.shapes if s.config.sae.architecture == "topk"}
    assert grid == {(x, k) for x in (16, 32, 64, 128) for k in (16, 32)}  # the paper's Fig. 18


# --- the run ---

SHAPES = ["topk-x2", "topk-x4", "relu_l1-x2", "relu_l1-x4"]


@pytest.fixture(scope="module")
def shape_run(tmp_path_factory, tiny_model_dir, tiny_corpus):
    tmp = tmp_path_factory.mktemp("shapes")
    config = tmp / "shapes.toml"
    data = experiment_data(tiny_corpus, tiny_model_dir, architecture=["topk", "relu_l1"], expansion=[2, 4], k=4)
    config.write_text(tomli_w.dumps(data))
    out = tmp / "run"
    argv = ["run", "--config", str(config), "--out", str(out), "--quiet"]
    return out, argv, main(argv), config


def test_every_shape_is_trained_on_every_variant_and_layer(shape_run):
    out, _, code, _ = shape_run
    assert code == 0
    sweep = RunDir(out)
    for label in SHAPES:
        architecture, expansion = label.split("-x")[0], int(label.split("-x")[1])
        part = sweep.shape_run(label)
        assert part.root == out / "shapes" / label
        for variant in ("trained", "rerandomized"):
            cfg = json.loads((part.sae(SAEKey(variant, 3)) / "cfg.json").read_text())
            saved_as = {"topk": "topk", "relu_l1": "standard"}[architecture]  # SAELens's name for ReLU-L1
            assert (cfg["architecture"], cfg["d_sae"]) == (saved_as, expansion * 32)
        rows = json.loads(part.metrics_json.read_text())
        assert len(rows) == 2 and {row["d_sae"] for row in rows} == {expansion * 32}
        assert part.interp("token").table.is_file() and part.verdict_json.is_file()
        assert tomllib.loads(part.config.read_text())["sae"]["architecture"] == architecture


def test_the_shapes_share_one_harvest(shape_run):
    out, *_ = shape_run
    assert len(list((out / "activations").glob("**/manifest.json"))) == 2 * 2  # variants x splits
    assert not list((out / "shapes").glob("**/activations"))
    assert not list((out / "shapes").glob("*/tokens"))


def test_a_rerun_resumes_with_nothing_to_do(shape_run):
    out, argv, _, _ = shape_run
    weights = sorted((out / "shapes").glob("**/sae_weights.safetensors"))
    before = [path.stat().st_mtime_ns for path in weights]
    assert main([*argv, "--skip", "interpret", "analyze", "report"]) == 0
    assert [path.stat().st_mtime_ns for path in weights] == before


def test_the_report_shows_the_verdict_per_shape(shape_run):
    out, *_ = shape_run
    page = (out / "report.html").read_text()
    assert page.count('<h3 id="shape-') == len(SHAPES)
    assert 'id="matrix-rerandomized"' in page and 'alt="gap against SAE width"' in page
    for label in SHAPES:
        assert f'<th title="">{label}</th>' in page
    assert "fuzzing AUROC" in page and "separates from rerandomized" in page


def test_the_later_stages_loop_over_the_shapes_and_a_shape_reads_the_sweeps_data(shape_run, capsys):
    out, *_ = shape_run
    assert main(["analyze", str(out), "--quiet"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("SAE shape")] == [
        f"SAE shape {label}" for label in SHAPES
    ]
    part = out / "shapes" / "topk-x2"
    assert main(["report", str(part), "--quiet"]) == 0  # its dashboards read the sweep's tokens and caches
    assert (part / "report.html").is_file()


def test_resuming_with_other_data_is_refused_for_a_new_shape_too(shape_run, capsys):
    out, argv, _, _ = shape_run
    code = main([*argv, "--set", "sae.expansion=[2, 4, 8]", "--set", "tokens.train_tokens=1024"])
    assert code == 2
    assert "tokens.train_tokens (2048 → 1024) differs from the run" in capsys.readouterr().err
    assert not (out / "shapes" / "topk-x8").exists()


def test_a_one_shape_config_and_a_sweep_do_not_share_a_folder(shape_run, tiny_model_dir, tiny_corpus, capsys):
    out, _, _, config = shape_run
    single = config.with_name("single.toml")
    single.write_text(tomli_w.dumps(experiment_data(tiny_corpus, tiny_model_dir, expansion=2, k=4)))
    assert main(["run", "--config", str(single), "--out", str(out), "--quiet"]) == 2
    assert "holds a sweep over SAE shapes" in capsys.readouterr().err
    one = out.parent / "one"
    assert main(["run", "--config", str(single), "--out", str(one), "--quiet", "--skip", "interpret", "analyze"]) == 0
    assert main(["run", "--config", str(config), "--out", str(one), "--quiet"]) == 2
    assert "holds a run of one SAE shape" in capsys.readouterr().err


def test_k_at_least_d_sae_in_any_shape_stops_the_run_before_any_work(tmp_path, tiny_model_dir, tiny_corpus, capsys):
    config = tmp_path / "big_k.toml"
    config.write_text(tomli_w.dumps(experiment_data(tiny_corpus, tiny_model_dir, expansion=[4, 1], k=40)))
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: SAE shape topk-x1: sae.k = 40 is invalid" in err[0]
    assert not out.exists()


def test_the_plan_shows_each_shape_and_counts_the_shared_harvest_once(shape_run, capsys):
    _, _, _, config = shape_run
    assert main(["run", "--config", str(config), "--out", str(config.parent / "plan"), "--plan", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("SAE shape")] == [f"SAE shape {s}" for s in SHAPES]
    assert "all 4 shapes:" in out and "tokenize and harvest counted once" in out
    assert not (config.parent / "plan").exists()
