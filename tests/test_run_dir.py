"""The run directory: the default layout, every axis, SAE discovery and its one order."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from randsae.errors import UserError
from randsae.run_dir import RunDir, SAEKey, Site, Timings, judge_label


def test_the_default_run_keeps_the_simple_layout(tmp_path: Path):
    run = RunDir(tmp_path)
    key = SAEKey("trained", 3)
    assert run.sae(key) == tmp_path / "saes" / "trained" / "layer3"
    assert run.activations(key.site, "heldout") == tmp_path / "activations" / "trained" / "layer3" / "heldout"
    assert run.tokens("train") == tmp_path / "tokens" / "train.safetensors"
    assert run.interp("token").summary == tmp_path / "interp" / "token" / "interp.json"
    assert run.latent_cache(key) == tmp_path / "interp" / "latent_cache" / "trained.layer3"
    assert run.analysis_part(key) == tmp_path / "analysis" / "parts" / "trained.layer3.npz"
    assert key.module == "trained.layer3"


def test_every_axis_adds_one_level(tmp_path: Path):
    run = RunDir(tmp_path)
    key = SAEKey("rerandomized", 2, model="pythia-160m", variant_seed=4, sae_seed=1)
    assert run.sae(key) == tmp_path / "models" / "pythia-160m" / "saes" / "rerandomized-draw4" / "layer2" / "seed1"
    assert run.activations(key.site, "train") == (
        tmp_path / "models" / "pythia-160m" / "activations" / "rerandomized-draw4" / "layer2" / "train"
    )
    assert key.site == Site("rerandomized", 2, "pythia-160m", 4)
    assert (
        run.tokens("heldout", "pythia-160m") == tmp_path / "models" / "pythia-160m" / "tokens" / "heldout.safetensors"
    )
    assert key.module == "pythia-160m.rerandomized-draw4.layer2.seed1"


def test_a_shape_of_a_sweep_keeps_its_saes_and_reads_the_sweeps_data(tmp_path: Path):
    sweep = RunDir(tmp_path)
    shape = sweep.shape_run("topk-x16-k32")
    key = SAEKey("trained", 3)
    assert shape.sae(key) == tmp_path / "shapes" / "topk-x16-k32" / "saes" / "trained" / "layer3"
    assert shape.metrics_json == tmp_path / "shapes" / "topk-x16-k32" / "metrics.json"
    assert shape.interp("token").root == tmp_path / "shapes" / "topk-x16-k32" / "interp" / "token"
    assert shape.activations(key.site, "heldout") == tmp_path / "activations" / "trained" / "layer3" / "heldout"
    assert shape.tokens("train") == sweep.tokens("train")
    assert (shape.tokenizer(), shape.unembedding()) == (sweep.tokenizer(), sweep.unembedding())
    # Named by its path (`randsae report RUN/shapes/LABEL`), a shape's part reads the sweep's data too.
    (tmp_path / "config.toml").write_text("")
    assert RunDir.at(tmp_path / "shapes" / "topk-x16-k32") == shape
    assert RunDir.at(tmp_path / "elsewhere" / "topk-x16-k32").data_root is None


@pytest.mark.parametrize("variant_seed, sae_seed", list(itertools.product([None, 0, 7], [None, 0, 3])))
def test_a_folder_parses_back_to_its_key(variant_seed, sae_seed):
    key = SAEKey("rerandomized_keep_embeddings", 17, None, variant_seed, sae_seed)
    assert SAEKey.from_parts(key.parts()) == key


@pytest.mark.parametrize(
    "parts",
    [
        ("trained",),
        ("trained", "block3"),
        ("trained", "layer3", "topk"),
        ("trained", "layer3", "seed1", "topk"),
    ],
)
def test_folders_that_are_not_sae_folders_are_skipped(parts):
    assert SAEKey.from_parts(parts) is None


def _save_fake_sae(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text("{}")


def test_discovery_finds_every_sae_in_the_config_order(tmp_path: Path):
    run = RunDir(tmp_path)
    (tmp_path / "config.toml").write_text('variants = ["control", "trained"]\n')
    keys = [
        SAEKey("trained", 10),
        SAEKey("trained", 3),
        SAEKey("control", 3),
        SAEKey("step0", 3),
        SAEKey("zzz_custom", 1),
        SAEKey("trained", 3, model="gpt2"),
        SAEKey("trained", 3, sae_seed=2),
    ]
    for key in keys:
        _save_fake_sae(run.sae(key))
    (tmp_path / "saes" / "trained" / "notes").mkdir()  # not an SAE folder
    found = run.discover_saes()
    assert found == [
        SAEKey("control", 3),
        SAEKey("trained", 3),
        SAEKey("trained", 3, sae_seed=2),
        SAEKey("trained", 10),
        SAEKey("step0", 3),
        SAEKey("zzz_custom", 1),
        SAEKey("trained", 3, model="gpt2"),
    ]


def test_no_sae_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no SAE under"):
        RunDir(tmp_path).discover_saes()
    with pytest.raises(UserError, match="not a randsae run directory"):
        RunDir.existing(tmp_path)


def test_judges_sit_side_by_side_the_llm_judge_first(tmp_path: Path):
    run = RunDir(tmp_path)
    assert judge_label("token") == "token"
    assert judge_label("http", "Qwen/Qwen2.5 7B:instruct") == "http-Qwen2.5_7B_instruct"
    assert judge_label("hf", "/models/llama-3-8b/") == "hf-llama-3-8b"
    for judge in ("token", "http-qwen"):
        run.interp(judge).root.mkdir(parents=True)
        run.interp(judge).table.write_text("variant,layer,latent\n")
    assert run.interp_judges() == ["http-qwen", "token"]


def test_timings_accumulate_across_resumes(tmp_path: Path):
    run = RunDir(tmp_path)
    Timings(run).add("train", 2.0)
    timings = Timings(run)
    timings.add("train", 3.0)
    with timings.stage("report"):
        pass
    assert json.loads(run.timings.read_text())["train"] == pytest.approx(5.0)
    assert set(Timings(run).seconds) == {"train", "report"}


def test_a_failed_stage_records_no_time_and_an_interrupted_one_does(tmp_path: Path):
    run = RunDir(tmp_path)
    Timings(run).add("train", 2.0)
    before = run.timings.read_bytes()
    with pytest.raises(UserError), Timings(run).stage("interpret"):
        raise UserError("no judge", "Start it")
    assert run.timings.read_bytes() == before, "a command that fails on a mistake leaves the run as it was"
    with pytest.raises(KeyboardInterrupt), Timings(run).stage("interpret"):
        raise KeyboardInterrupt
    assert set(Timings(run).seconds) == {"train", "interpret"}
