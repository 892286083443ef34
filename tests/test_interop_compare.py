"""`randsae compare` end to end: an SAE trained by eai-sparsify's own trainer on a layer of the tiny model
(the test suite's offline stand-in for the embedded SmolLM2-135M), read back and compared with SAEs that randsae
trains on two random variants, through every stage to the report."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from randsae.cli import main
from randsae.config import dump_config
from randsae.data.activations import ActivationCache
from randsae.data.tokens import counted_rows
from randsae.interop import read_sae
from randsae.metrics.results import load_metrics
from randsae.run_dir import RunDir, SAEKey, Site
from randsae.sae import load_sae
from tests.helpers import tiny_config, tiny_interp_config

LAYER, D_SAE, K = 2, 128, 4


@pytest.fixture(scope="module")
def sparsify_checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    """sparsify's Trainer on the tiny model's block 2 output: what a sparsify user has."""
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify is not installed: `pip install -e '.[test]'`")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("sparsify")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(2, 60, (64, 32), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    cfg = sparsify.TrainConfig(
        sparsify.SaeConfig(num_latents=D_SAE, k=K),
        batch_size=8,
        layers=[LAYER],
        log_to_wandb=False,
        save_dir=str(folder),
        run_name="tiny",
        optimizer="adam",
        lr_warmup_steps=2,
    )
    sparsify.Trainer(cfg, dataset, model).fit()
    return folder / "tiny" / f"layers.{LAYER}"


@pytest.fixture(scope="module")
def compared(tmp_path_factory, sparsify_checkpoint, tiny_model_dir, tiny_corpus) -> Path:
    folder = tmp_path_factory.mktemp("compare")
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained", "rerandomized", "control"))
    interp = tiny_interp_config(
        n_latents=4,
        min_examples=4,
        n_top_windows=10_000,
        n_explanation_windows=6,
        n_quantiles=3,
        n_per_quantile=3,
        n_negatives=10,
        verify_rows=32,
    )
    analysis = dataclasses.replace(cfg.analysis, bootstrap_samples=20, window_tokens=16, min_token_count=5)
    cfg = dataclasses.replace(cfg, interp=interp, analysis=analysis)  # the scored_run fixture's small settings
    (folder / "compare.toml").write_text(dump_config(cfg))
    out = folder / "run"
    argv = ["compare", "--sae", str(sparsify_checkpoint), "--config", str(folder / "compare.toml"), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    return out


def test_the_imported_sae_is_the_trained_one_with_its_origin(compared, sparsify_checkpoint):
    run = RunDir(compared)
    folder = run.sae(SAEKey("trained", LAYER))
    origin = json.loads((folder / "origin.json").read_text())
    assert origin["format"] == "sparsify" and origin["source"] == str(sparsify_checkpoint.resolve())
    assert origin["hook_name"] == f"layers.{LAYER}" and origin["layer"] == LAYER
    assert not (folder / "training.json").exists()  # not trained here
    imported, stored = read_sae(sparsify_checkpoint).sae, load_sae(folder)
    for name, tensor in imported.state_dict().items():
        assert torch.equal(stored.state_dict()[name], tensor), name
    assert stored.cfg.metadata["hook_name"] == f"gpt_neox.layers.{LAYER}"


def test_random_variants_get_saes_of_the_same_shape_and_every_sae_is_evaluated(compared):
    run = RunDir(compared)
    rows = {row.variant: row for row in load_metrics(run)}
    assert set(rows) == {"trained", "rerandomized", "control"}
    assert all(row.layer == LAYER and row.d_sae == D_SAE for row in rows.values())
    for variant in ("rerandomized", "control"):
        sae = load_sae(run.sae(SAEKey(variant, LAYER)))
        assert (sae.cfg.architecture, sae.cfg.d_sae, sae.cfg.k) == ("topk", D_SAE, K)
        assert (run.sae(SAEKey(variant, LAYER)) / "training.json").is_file()
    assert rows["trained"].l0 == K


def test_the_trained_row_is_the_sparsify_saes_own_quality(compared, sparsify_checkpoint):
    """Pooled EV of the trained row = 1 - FVU of sparsify's own forward over the same held-out rows."""
    sparsify = pytest.importorskip("sparsify")
    run = RunDir(compared)
    cache = ActivationCache.open(run.activations(Site("trained", LAYER), "heldout"))
    keep = counted_rows(run.tokens("heldout"))
    x = torch.cat(list(cache.iter_chunks(rows=4096)))[keep[: cache.n_tokens]].float()
    with torch.no_grad():
        fvu = sparsify.SparseCoder.load_from_disk(sparsify_checkpoint)(x).fvu.item()
    (row,) = [row for row in load_metrics(run) if row.variant == "trained"]
    assert row.explained_variance_pooled == pytest.approx(1 - fvu, abs=1e-4)


def test_the_whole_comparison_runs_and_the_report_names_the_origin(compared, sparsify_checkpoint):
    run = RunDir(compared)
    assert run.analysis_json.is_file() and run.verdict_json.is_file()
    report = run.report.read_text()
    assert "Imported SAEs" in report and "sparsify checkpoint" in report
    assert str(sparsify_checkpoint.resolve()) in report


def test_rerunning_the_comparison_resumes(compared, sparsify_checkpoint):
    run = RunDir(compared)
    weights = [run.sae(SAEKey(variant, LAYER)) / "sae_weights.safetensors" for variant in ("trained", "control")]
    before = [path.stat().st_mtime_ns for path in weights]
    config = compared.parent / "compare.toml"
    argv = ["compare", "--sae", str(sparsify_checkpoint), "--config", str(config), "--out", str(compared), "--quiet"]
    assert main([*argv, "--skip", "interpret", "analyze", "report"]) == 0
    assert [path.stat().st_mtime_ns for path in weights] == before  # nothing imported or trained again


def test_another_sae_into_the_same_run_directory_is_refused(compared, sparsify_checkpoint, tmp_path, capsys):
    other = shutil.copytree(sparsify_checkpoint, tmp_path / f"layers.{LAYER}")  # same SAE, another source
    config = compared.parent / "compare.toml"
    argv = ["compare", "--sae", str(other), "--config", str(config), "--out", str(compared), "--quiet"]
    assert main(argv) == 2
    assert "already holds another trained SAE for layer 2" in capsys.readouterr().err


def test_the_experiment_takes_layers_model_and_shape_from_the_saes(tmp_path):
    """With the embedded default config: the SAELens SAEs' layers, their TransformerLens model name as its
    Hub id, their architecture, width and k; one SAE seed and no seed-stability retraining."""
    pytest.importorskip("transformer_lens", reason="sae-lens (with TransformerLens) is not installed")
    from randsae.interop.compare import plan_comparison
    from randsae.sae import SAEConfig, build_sae

    for layer in (3, 1):
        metadata = {"model_name": "pythia-70m-deduped", "hook_name": f"blocks.{layer}.hook_resid_post"}
        build_sae(SAEConfig("topk", 512, 8 * 512, k=16, metadata=metadata), seed=0).save(tmp_path / f"l{layer}")
    comparison = plan_comparison(None, [], [str(tmp_path / "l3"), str(tmp_path / "l1")])
    cfg = comparison.cfg
    assert cfg.model.name == "EleutherAI/pythia-70m-deduped" and cfg.layers == (1, 3)
    assert (cfg.sae.architecture, cfg.sae.expansion, cfg.sae.k) == ("topk", 8, 16)
    assert cfg.replicates.sae_seeds == 1 and not cfg.analysis.seed_stability
    assert [item.origin.layer for item in comparison.imported] == [1, 3]
    assert plan_comparison(None, ["model.name=EleutherAI/pythia-160m"], [str(tmp_path / "l1")]).cfg.model.name == (
        "EleutherAI/pythia-160m"
    )
    listed = tmp_path / "compare.toml"  # SAEs listed in the config, added to --sae
    listed.write_text(f'variants = ["trained", "control"]\n\n[[imported_sae]]\npath = "{tmp_path / "l3"}"\n')
    from_file = plan_comparison(listed, [], [str(tmp_path / "l1")])
    assert from_file.cfg.layers == (1, 3) and from_file.cfg.variants == ("trained", "control")
    listed.write_text(f'variants = ["trained", "control"]\n\n[[imported_sae]]\npath = "{tmp_path / "l3"}"\nlayer = 5\n')
    given = plan_comparison(listed, [], [])  # a layer given for a hook randsae would not map
    assert given.cfg.layers == (5,) and given.imported[0].origin.hook_name == "blocks.3.hook_resid_post"


def test_auto_interp_files_keep_delphis_layout(compared):
    """delphi's reader (delphi/log/result_analysis.py `load_data`, not importable without its GPU-stack
    dependencies) globs scores/{scorer}/*{module}*, reads each file as a JSON list of example records and takes
    the latent from the text after "latent" in the stem; explanations/{module}_latent{i}.txt hold a JSON string."""
    run = RunDir(compared)
    files = run.interp("token")
    modules = {key.module for key in run.discover_saes()}
    scored = 0
    for scorer in ("detection", "fuzz"):
        for path in sorted((files.root / "scores" / scorer).glob("*.txt")):
            module, latent = path.stem.rsplit("_latent", 1)
            assert module in modules and int(path.stem.split("latent")[-1]) == int(latent)
            records = json.loads(path.read_text())
            assert isinstance(records, list) and records
            for record in records:
                assert {"str_tokens", "activations", "activating", "prediction", "probability", "correct"} <= set(
                    record
                )
                assert len(record["str_tokens"]) == len(record["activations"])
                assert isinstance(record["activating"], bool)
            explanation = files.explanation(module, int(latent))
            assert isinstance(json.loads(explanation.read_text()), str)
            scored += 1
    assert scored >= 2 * len(modules)


def test_delphis_own_reader_loads_the_scores(compared):
    """Where delphi imports (eai-delphi needs vllm, so not in the test extra): its `load_data` reads every
    example record of every score file of the run."""
    result_analysis = pytest.importorskip(
        "delphi.log.result_analysis",
        reason="eai-delphi is not installed (it requires vllm); test_auto_interp_files_keep_delphis_layout checks "
        "the layout its reader expects",
    )
    files = RunDir(compared).interp("token")
    modules = [key.module for key in RunDir(compared).discover_saes()]
    frame, _ = result_analysis.load_data(files.root / "scores", modules)
    paths = list((files.root / "scores").glob("*/*.txt"))
    assert len(frame) == sum(len(json.loads(path.read_text())) for path in paths)
    assert set(frame["score_type"]) == {"detection", "fuzz"} and set(frame["module"]) == set(modules)
    assert 0 <= result_analysis.compute_auc(frame[frame["score_type"] == "detection"]) <= 1
