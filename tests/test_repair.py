"""Damaged runs repair themselves: deleting or corrupting any artifact and rerunning the same command
rebuilds exactly that artifact (bit-identical, the pipeline being deterministic) and nothing else."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from randsae.analysis import AnalysisConfig, analyze_run
from randsae.errors import UserError
from randsae.experiment import run_pipeline
from randsae.metrics.results import load_metrics
from randsae.run_dir import RunDir, SAEKey, Site
from tests.helpers import tiny_config


def _hashes(root: Path) -> dict[Path, str]:
    return {
        path.relative_to(root): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in ("timings.json", "training.json", "interp.json")  # wall time
    }


@pytest.fixture
def run(tmp_path, tiny_run) -> RunDir:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return RunDir(copy)


def _rerun(run: RunDir, tiny_model_dir, tiny_corpus):
    return run_pipeline(tiny_config(tiny_model_dir, tiny_corpus), run, progress=False)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damages(run: RunDir) -> dict[str, tuple[Path, Callable[[], object]]]:
    """Each kind of damage: (the artifact that must be rebuilt, how to damage it)."""
    heldout = run.activations(Site("control", 1), "heldout")
    train = run.activations(Site("trained", 3), "train")
    sae = run.sae(SAEKey("rerandomized", 3))
    return {
        "delete token file": (run.tokens("heldout"), lambda: run.tokens("heldout").unlink()),
        "truncate token file": (run.tokens("train"), lambda: _truncate(run.tokens("train"))),
        "delete cache folder": (heldout, lambda: shutil.rmtree(heldout)),
        "delete cache manifest": (train, lambda: (train / "manifest.json").unlink()),
        "truncate cache shard": (heldout, lambda: _truncate(next(heldout.glob("shard_*")))),
        "delete cache shard": (train, lambda: next(train.glob("shard_*")).unlink()),
        "truncate SAE weights": (sae, lambda: _truncate(sae / "sae_weights.safetensors")),
        "delete SAE folder": (sae, lambda: shutil.rmtree(sae)),
        "delete metrics.json": (run.metrics_json, lambda: run.metrics_json.unlink()),
        "delete an SAE's metrics row": (
            run.sae_metrics(SAEKey("control", 3)),
            lambda: run.sae_metrics(SAEKey("control", 3)).unlink(),
        ),
    }


@pytest.mark.parametrize("damage", list(_damages(RunDir(Path("run")))))
def test_a_damaged_artifact_is_rebuilt_identically_and_nothing_else(damage, run, tiny_model_dir, tiny_corpus):
    before = _hashes(run.root)
    rows = load_metrics(run)
    artifact, harm = _damages(run)[damage]
    harm()
    start_ns = time.time_ns()
    assert _rerun(run, tiny_model_dir, tiny_corpus) == rows
    assert _hashes(run.root) == before, "everything is back, bit for bit"
    rewritten = {
        path
        for path in before
        if path.parts[0] in ("activations", "saes", "tokens", "config.toml")
        and (run.root / path).stat().st_mtime_ns > start_ns
        and not (run.root / path).is_relative_to(artifact)
    }
    assert not rewritten, "intact caches, SAEs, their metrics rows, tokens and the config are not rewritten"


def test_an_unreadable_training_checkpoint_restarts_training(run, tiny_model_dir, tiny_corpus, capsys):
    folder = run.sae(SAEKey("trained", 1))
    weights = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "training.json").unlink()
    (folder / "train_checkpoint.pt").write_bytes(b"not a checkpoint")
    _rerun(run, tiny_model_dir, tiny_corpus)
    assert "train_checkpoint.pt is unreadable" in capsys.readouterr().err
    assert (folder / "sae_weights.safetensors").read_bytes() == weights
    assert not (folder / "train_checkpoint.pt").exists()


def test_a_stale_combined_table_is_rewritten_from_the_saes_rows(run, tiny_model_dir, tiny_corpus):
    import json

    rows = json.loads(run.metrics_json.read_text())
    run.metrics_json.write_text(json.dumps(rows[:1]))
    reran = _rerun(run, tiny_model_dir, tiny_corpus)
    assert [(r.variant, r.layer) for r in reran] == [(r["variant"], r["layer"]) for r in rows]
    assert json.loads(run.metrics_json.read_text()) == rows


def test_a_damaged_metrics_row_names_its_repair(run, tiny_model_dir, tiny_corpus):
    run.sae_metrics(SAEKey("control", 1)).write_text("{not json")
    with pytest.raises(UserError, match=r"layer1/metrics.json is damaged .* Delete it and rerun `randsae run`"):
        _rerun(run, tiny_model_dir, tiny_corpus)


def test_a_damaged_analysis_part_is_measured_again(run):
    cfg = AnalysisConfig(bootstrap_samples=20)
    first = analyze_run(run, cfg, progress=False)
    part = run.analysis_part(SAEKey("trained", 1))
    _truncate(part)
    second = analyze_run(run, cfg, progress=False)
    assert second.saes == first.saes
    assert part.stat().st_size > 0


def _interp_run(tmp_path: Path):
    from randsae.interp import interpret_run
    from tests.helpers import build_interp_run, str_tokens, tiny_interp_config

    run = RunDir(build_interp_run(tmp_path / "run", variants=("tokenlike",)))
    cfg = tiny_interp_config(n_latents=4, min_examples=4)
    return run, lambda: interpret_run(run, cfg, progress=False, str_tokens=str_tokens)


@pytest.mark.parametrize(
    "artifact", ["latent cache shard", "selection", "score file", "latent record", "explanation", "interp.json"]
)
def test_a_damaged_interp_artifact_is_rebuilt_identically(tmp_path, artifact):
    run, interpret = _interp_run(tmp_path)
    first = interpret()
    files = run.interp("token")
    key = run.discover_saes()[0]
    latent = first.latents[0].latent
    path = {
        "latent cache shard": next(run.latent_cache(key).glob("shard_*")),
        "selection": files.selection,
        "score file": files.score("fuzz", key.module, latent),
        "latent record": files.latent_record(key.module, latent),
        "explanation": files.explanation(key.module, latent),
        "interp.json": files.summary,
    }[artifact]
    before = _hashes(run.root / "interp")
    _truncate(path)
    second = interpret()
    assert second.saes == first.saes and second.latents == first.latents
    assert _hashes(run.root / "interp") == before  # interp.json, which records wall time, is left out
