"""Resuming a run directory with a changed config: which differences leave finished work valid (`config_changes`),
the refusal naming keys and invalid parts, and the rewritten config.toml when a change is allowed."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from randsae.config import (
    MADE_FROM,
    RESUMABLE,
    RUN_PARTS,
    ExperimentConfig,
    config_changes,
    dump_config,
    load_config,
    load_run_config,
)
from randsae.errors import UserError
from randsae.experiment import run_pipeline
from randsae.interp.config import InterpConfig
from randsae.metrics.results import load_metrics
from randsae.run_dir import RunDir, SAEKey
from tests.helpers import tiny_config

RANDOM = ("rerandomized", "control")  # the embedded default's random variants


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (("interp.n_latents=5", "analysis.seed=3", "device=cpu", "train.checkpoint_every_s=5"), [None] * 4),
        (("layers=[3, 10, 17, 20]",), [None]),
        (('variants=["trained", "rerandomized", "rerandomized_keep_embeddings", "control"]',), [None]),
        (("layers=[10, 17]",), [("activations", None, (3,))]),
        (
            ('variants=["trained", "control"]',),
            [("activations", ("rerandomized",), None)],
        ),
        (("model.name=gpt2",), [("tokens", None, None)]),
        (("model.step0_revision=step1",), [("activations", ("step0",), None)]),
        (("tokens.context_size=128",), [("tokens", None, None)]),
        (("activation_dtype=bfloat16",), [("activations", None, None)]),
        (("variant.seed=1",), [("activations", RANDOM, None)]),
        (("eval.batch_windows=4",), [("activations", None, None)]),
        (("sae.k=16", "seed=1", "train.lr=0.001"), [("saes", None, None)] * 3),
        (("eval.ce_windows=2",), [("metrics", None, None)]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
def test_config_changes_name_the_first_part_each_difference_invalidates(overrides, expected):
    old = load_config()
    changes = config_changes(old, load_config(None, overrides))
    keys = [item.partition("=")[0] for item in overrides]
    assert sorted(change.key for change in changes) == sorted(keys)
    found = {
        change.key: None if change.invalidates is None else (change.invalidates, change.variants, change.layers)
        for change in changes
    }
    assert [found[key] for key in keys] == expected


def test_a_change_reads_as_key_old_and_new_value():
    (change,) = config_changes(load_config(), load_config(None, ["sae.k=16"]))
    assert str(change) == "sae.k (32 → 16)" and change.resumed() == "sae.k = 32"
    assert config_changes(load_config(), load_config()) == []


def test_every_key_either_resumes_or_invalidates_a_part():
    paper = ExperimentConfig()
    for field in dataclasses.fields(paper):
        value = getattr(paper, field.name)
        keys = [f"{field.name}.{f.name}" for f in dataclasses.fields(value)] if dataclasses.is_dataclass(value) else []
        for key in keys or [field.name]:
            section = key.split(".")[0]
            listed = {key, section} & (set(RESUMABLE) | set(MADE_FROM))
            assert listed or key in ("layers", "variants"), key
    assert set(MADE_FROM.values()) <= set(RUN_PARTS)


def _mtimes(run):
    return {path: path.stat().st_mtime_ns for path in (run / "saes").rglob("*.safetensors")}


def test_a_resumed_run_takes_harmless_changes_and_refuses_the_rest(tmp_path, tiny_run, tiny_model_dir, tiny_corpus):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = tiny_config(tiny_model_dir, tiny_corpus)
    before, written = _mtimes(run), (run / "config.toml").read_bytes()

    wrong_k = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, k=2))
    with pytest.raises(UserError) as refused:
        run_pipeline(wrong_k, run, progress=False)
    assert str(refused.value) == (
        f"sae.k (4 → 2) differs from the run in {run}: the 8 SAEs and the metrics would be invalid. "
        "Use a new --out, or set sae.k = 4 to resume it"
    )
    dropped = dataclasses.replace(cfg, variants=("trained", "control"))
    with pytest.raises(UserError, match="the 8 activation caches, the 4 SAEs and the metrics would be left out"):
        run_pipeline(dropped, run, progress=False)
    assert (run / "config.toml").read_bytes() == written

    harmless = dataclasses.replace(cfg, interp=InterpConfig(n_latents=5), variants=(*cfg.variants, "permuted"))
    rows = run_pipeline(harmless, run, progress=False)
    assert load_config(run / "config.toml") == harmless
    assert {(row.variant, row.layer) for row in rows} >= {("permuted", 1), ("permuted", 3)}
    assert before == {path: mtime for path, mtime in _mtimes(run).items() if path in before}, "nothing redone"
    assert RunDir(run).sae(SAEKey("permuted", 3)).is_dir() and len(load_metrics(RunDir(run))) == 10


def test_a_run_stopped_before_training_takes_a_new_sae_size(tmp_path, tiny_model_dir, tiny_corpus):
    """The issue's case: a wrong `k` found after the harvest; the rerun with the fixed value is not refused."""
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained",), layers=(1,))
    run = tmp_path / "run"
    run_pipeline(cfg, run, progress=False)
    shutil.rmtree(run / "saes")
    (run / "metrics.json").unlink()
    (run / "metrics.csv").unlink()
    fixed = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, k=2))
    (row,) = run_pipeline(fixed, run, progress=False)
    assert row.l0 == pytest.approx(2.0) and load_config(run / "config.toml") == fixed


def test_a_run_config_written_with_every_sparsity_setting_still_reads(tmp_path):
    """Before each architecture took only its own sparsity settings, config.toml held `k` and
    `l1_coefficient` both; the unused one is dropped when the run is read, nothing else changes."""
    cfg = load_config()
    run = RunDir(tmp_path)
    text = dump_config(cfg).replace("[sae]\n", "[sae]\nl1_coefficient = 5.0\n", 1)
    run.config.write_text(text)
    assert "l1_coefficient = 5.0" in run.config.read_text()
    assert load_run_config(run) == cfg
    with pytest.raises(UserError, match="sae.l1_coefficient is set, but sae.architecture = 'topk'"):
        load_config(run.config)  # a user's own config is not corrected: it is refused
