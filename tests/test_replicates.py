"""Replicates: `[replicates] sae_seeds` SAEs per variant draw and layer, `variant_seeds` draws per random
variant, each its own SAE with its own metrics row; replicate 0 of each kind is the unreplicated run's."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from randsae.config import ReplicatesConfig
from randsae.errors import UserError
from randsae.experiment import run_pipeline, sae_keys
from randsae.metrics.results import load_metrics
from randsae.run_dir import SAE_WEIGHTS_FILE, RunDir, SAEKey, replicate_keys
from tests.helpers import tiny_config


def test_replicate_keys_draw_only_random_variants():
    assert replicate_keys("trained", 3) == [SAEKey("trained", 3)]
    assert replicate_keys("trained", 3, sae_seeds=2, variant_seeds=3) == [
        SAEKey("trained", 3, sae_seed=0),
        SAEKey("trained", 3, sae_seed=1),
    ]
    draws = replicate_keys("control", 3, variant_seeds=2)
    assert draws == [SAEKey("control", 3, variant_seed=0), SAEKey("control", 3, variant_seed=1)]
    assert [key.module for key in replicate_keys("control", 3, 2, 2)] == [
        "control-draw0.layer3.seed0",
        "control-draw0.layer3.seed1",
        "control-draw1.layer3.seed0",
        "control-draw1.layer3.seed1",
    ]
    assert SAEKey.from_parts(("control-draw1", "layer3", "seed0")) == SAEKey("control", 3, variant_seed=1, sae_seed=0)


def test_replicate_counts_below_one_are_refused():
    with pytest.raises(UserError, match=r"replicates.sae_seeds = 0 is invalid"):
        ReplicatesConfig(sae_seeds=0)


def _weights(run: RunDir, key: SAEKey) -> dict[str, torch.Tensor]:
    return load_file(run.sae(key) / SAE_WEIGHTS_FILE)


def test_a_replicated_run_trains_every_replicate_and_replicate_zero_is_the_plain_run(
    tmp_path, tiny_run, tiny_model_dir, tiny_corpus
):
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained", "control"))
    cfg = dataclasses.replace(cfg, replicates=ReplicatesConfig(sae_seeds=2, variant_seeds=2))
    rows = run_pipeline(cfg, tmp_path / "replicated", progress=False)
    run = RunDir(tmp_path / "replicated")
    assert [row.key for row in rows] == sae_keys(cfg) == [row.key for row in load_metrics(run)]
    assert len(rows) == 2 * 2 + 2 * 2 * 2  # trained: layers × seeds; control: layers × draws × seeds
    assert run.discover_saes() == sae_keys(cfg)
    assert run.missing_saes() is None

    plain = RunDir(tiny_run)  # same seeds, one replicate of each kind
    for variant, draw in (("trained", None), ("control", 0)):
        expected = _weights(plain, SAEKey(variant, 1))
        got = _weights(run, SAEKey(variant, 1, variant_seed=draw, sae_seed=0))
        assert all(torch.equal(got[name], tensor) for name, tensor in expected.items()), variant

    seed0, seed1 = (_weights(run, SAEKey("trained", 1, sae_seed=s))["W_dec"] for s in (0, 1))
    assert not torch.allclose(seed0, seed1), "SAE seeds train different SAEs"
    by_key = {row.key: row for row in rows}
    ev = [by_key[SAEKey("control", 1, variant_seed=d, sae_seed=0)].explained_variance_pooled for d in (0, 1)]
    assert ev[0] != ev[1], "each draw is its own model, with its own activations"

    folder = run.sae(SAEKey("control", 3, variant_seed=1, sae_seed=1))
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    assert run.missing_saes() == "1 of 12 SAEs not trained yet: control layer 3 draw1 seed1"
    assert run_pipeline(cfg, run, progress=False) == rows, "the lost replicate is trained again, the same"
