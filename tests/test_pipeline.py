"""The whole pipeline on the tiny model, its outputs, resuming, and the CLI's one-line errors."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from randsae.cli import main
from randsae.config import SAEShape, dump_config, load_config
from randsae.data.tokens import load_excluded_ids, load_tokens
from randsae.experiment import run_pipeline
from randsae.metrics.results import format_metrics_table, load_metrics
from randsae.run_dir import RunDir, SAEKey, Site
from randsae.sae import load_sae
from tests.helpers import tiny_config


def test_run_directory_has_every_stage_output(tiny_run):
    cfg = load_config(tiny_run / "config.toml")
    rows = load_metrics(RunDir(tiny_run))
    assert [(r.variant, r.layer) for r in rows] == [
        (variant, layer) for variant in cfg.variants for layer in cfg.layers
    ]
    for row in rows:
        assert 0.0 < row.explained_variance_pooled <= 1.0 and row.l0 == pytest.approx(4.0)
        assert row.meaningful_downstream == (row.variant == "trained")
        folder = RunDir(tiny_run).sae(SAEKey(row.variant, row.layer))
        assert {"cfg.json", "sae_weights.safetensors", "training.json"} <= {p.name for p in folder.iterdir()}
        meta = json.loads((folder / "cfg.json").read_text())["metadata"]
        assert meta["variant"] == row.variant and meta["hook_name"] == f"gpt_neox.layers.{row.layer}"
    assert (tiny_run / "metrics.csv").read_text().count("\n") == len(rows) + 1
    assert (tiny_run / "tokens" / "heldout.safetensors").is_file() and (tiny_run / "tokenizer").is_dir()
    assert set(json.loads((tiny_run / "timings.json").read_text())) >= {"harvest", "train", "evaluate"}


def test_rerunning_resumes_without_recomputing(tiny_run, tiny_model_dir, tiny_corpus):
    before = {p: p.stat().st_mtime_ns for p in (tiny_run / "saes").rglob("*.safetensors")}
    rows = run_pipeline(tiny_config(tiny_model_dir, tiny_corpus), tiny_run, progress=False)
    assert rows == load_metrics(RunDir(tiny_run))
    assert before == {p: p.stat().st_mtime_ns for p in (tiny_run / "saes").rglob("*.safetensors")}


def test_a_trained_sae_reconstructs_its_heldout_activations(tiny_run):
    from randsae.data.activations import ActivationCache

    run = RunDir(tiny_run)
    sae = load_sae(run.sae(SAEKey("trained", 1)))
    x = ActivationCache.open(run.activations(Site("trained", 1), "heldout")).load()
    ids = load_tokens(run.tokens("heldout"))
    special = torch.isin(ids, torch.tensor(load_excluded_ids(run.tokens("heldout")), dtype=ids.dtype))
    assert special[:, 1:].any(), "the tiny corpus' document separators are special tokens inside windows"
    special[:, 0] = True  # BOS
    x = x[~special.flatten()]  # neither BOS nor separators count
    fvu = ((x - sae(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    row = next(r for r in load_metrics(run) if (r.variant, r.layer) == ("trained", 1))
    assert 1 - fvu.item() == pytest.approx(row.explained_variance_pooled, abs=1e-4)
    # the learning curve: every step of 16 (curve_points = 16), on all 992 non-BOS held-out rows (< curve_tokens)
    log = json.loads((run.sae(SAEKey("trained", 1)) / "training.json").read_text())
    assert [point["step"] for point in log["heldout_curve"]] == list(range(1, 17))
    assert log["heldout_curve"][-1]["explained_variance"] == pytest.approx(row.explained_variance_pooled, abs=1e-4)
    assert row.converged == log["converged"] is not None
    assert row.ev_change_last_quarter == pytest.approx(log["ev_change_last_quarter"])


def test_the_metrics_table_shows_convergence(tiny_run):
    rows = load_metrics(RunDir(tiny_run))
    rows[0] = dataclasses.replace(rows[0], converged=None)  # an SAE without a learning curve
    lines = format_metrics_table(rows).splitlines()
    assert lines[0].split()[-1] == "conv"
    shown = [line.split()[-1] for line in lines[2 : 2 + len(rows)]]
    assert shown == ["-"] + ["yes" if row.converged else "no" for row in rows[1:]]


def test_config_round_trips_and_rejects_unknown_keys(tmp_path, tiny_model_dir, tiny_corpus):
    cfg = tiny_config(tiny_model_dir, tiny_corpus)
    path = tmp_path / "c.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    path.write_text("[sae]\nexpanson = 4\n")
    from randsae.errors import UserError

    with pytest.raises(UserError, match=r"unknown config key 'expanson' in \[sae\]"):
        load_config(path)


def _cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def _bad_config(tiny_model_dir, tiny_corpus, case):
    import dataclasses

    from randsae.models.load import ModelConfig

    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained",))
    if case == "model":
        return dump_config(dataclasses.replace(cfg, model=ModelConfig(name="/nowhere/model.gguf")))
    if case == "layer":
        return dump_config(dataclasses.replace(cfg, layers=(1, 9)))
    if case == "step0":
        return dump_config(cfg).replace('variants = [\n    "trained",', 'variants = [\n    "step0",')
    if case == "variant":
        return dump_config(cfg).replace('variants = [\n    "trained",', 'variants = [\n    "shuffled",')
    return dump_config(cfg).replace("[sae]\n", "[sae]\nk_value = 3\n")


@pytest.mark.parametrize(
    "case, message",
    [
        ("model", "GGUF file /nowhere/model.gguf does not exist"),
        ("layer", "layer 9 is out of range: the model has 4 blocks"),
        ("variant", "variants = ['shuffled'] is invalid"),
        ("step0", "a list without step0"),
        ("key", "unknown config key 'k_value' in [sae]"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, tiny_model_dir, tiny_corpus, case, message):
    config = tmp_path / "bad.toml"
    config.write_text(_bad_config(tiny_model_dir, tiny_corpus, case))
    out = tmp_path / "run"
    code, err = _cli(["run", "--config", str(config), "--out", str(out), "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (out / "activations").exists(), "nothing half-written is left behind"


def test_cli_corrupt_cache_is_a_one_line_error(tmp_path, capsys, tiny_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "metrics.json").unlink()
    shutil.rmtree(run / "saes" / "control")
    shard = next((run / "activations" / "control" / "layer1" / "train").glob("shard_*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-7] + b"garbage")
    code, err = _cli(
        [
            "run",
            "--config",
            str(run / "config.toml"),
            "--out",
            str(run),
            "--quiet",
            "--skip",
            "interpret",
            "analyze",
            "report",
        ],
        capsys,
    )
    assert code == 2 and len(err) == 1 and "is corrupt (checksum mismatch)" in err[0] and "Delete" in err[0]


def test_report_on_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    code, err = _cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "not a randsae run directory" in err[0]


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "randsae.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "run" in done.stdout and "interpret" in done.stdout


def test_verify_rehashes_every_shard_and_names_a_corrupt_one(tmp_path, capsys, tiny_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    code = main(["verify", str(run), "--quiet"])
    assert code == 0 and "every checksum matches" in capsys.readouterr().out
    shard = next((run / "activations" / "trained" / "layer3" / "heldout").glob("shard_*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size: only the checksum can tell
    shard.write_bytes(bytes(data))
    code, err = _cli(["verify", str(run), "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and shard.name in err[0] and "checksum mismatch" in err[0]


@pytest.mark.parametrize(
    "sae, activations",
    [
        (SAEShape(architecture="batchtopk", expansion=4, k=4), "cache"),
        (SAEShape(architecture="matryoshka_batchtopk", expansion=4, k=4, matryoshka_groups=(1, 3)), "stream"),
        (SAEShape(architecture="jumprelu", expansion=4, l0_coefficient=1e-3), "cache"),
        (SAEShape(architecture="gated", expansion=4, l1_coefficient=1e-3), "cache"),
        (SAEShape(architecture="relu_l1", expansion=4, l1_coefficient=1e-3), "cache"),
    ],
    ids=lambda value: getattr(value, "architecture", value),
)
def test_run_trains_evaluates_and_saves_every_architecture(tmp_path, tiny_model_dir, tiny_corpus, sae, activations):
    """`[sae] architecture` end to end (cached and streamed training): `randsae run` trains, evaluates and writes
    an SAE that loads back (and into sae-lens, when installed, with the same reconstruction)."""
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained",), layers=(1,), sae=sae)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, activations=activations))
    path = tmp_path / "experiment.toml"
    path.write_text(dump_config(cfg))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = RunDir(tmp_path / "run")
    (row,) = load_metrics(run)
    assert row.explained_variance_pooled > 0.3 and row.l0 > 0
    folder = run.sae(SAEKey("trained", 1))
    ours = load_sae(folder)
    assert ours.architecture == sae.architecture and ours.cfg.d_sae == 128
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * 3
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (see tests/test_sae_saelens.py)")
    theirs = sae_lens.SAE.load_from_disk(folder)
    with torch.no_grad():
        assert torch.allclose(theirs.decode(theirs.encode(x)), ours(x), atol=1e-5)
