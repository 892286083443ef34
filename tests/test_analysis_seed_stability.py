"""Seed stability: Hungarian matching of decoder rows, retraining with another seed, and the stage wiring."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from randsae.analysis import AnalysisConfig, analyze_run
from randsae.analysis.seed_stability import live_reproduced, match_decoders, reproduced, second_seed_sae
from randsae.data.activations import ActivationCache
from randsae.errors import UserError
from randsae.run_dir import RunDir, Site
from randsae.sae import SAEConfig, TrainConfig, load_sae, train_sae
from tests.helpers import ANALYSIS_CONTEXT, STRUCTURED, TOKEN_ONLY, build_analysis_run


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=1, keepdim=True)


def test_permuted_and_rescaled_decoder_matches_every_latent():
    a = unit_rows(50, 32, seed=0)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    b = a[order] * 3.0
    match = match_decoders(a, b)
    np.testing.assert_array_equal(order[match.partner].numpy(), np.arange(50))
    np.testing.assert_allclose(match.cosine, 1.0, atol=1e-12)
    assert reproduced(match.cosine, 0.7).all()


def test_matching_maximizes_total_cosine_like_brute_force():
    a, b = unit_rows(6, 4, seed=2), unit_rows(6, 4, seed=3)
    cosine = (a @ b.T).double().numpy()
    best = max(sum(cosine[i, p[i]] for i in range(6)) for p in itertools.permutations(range(6)))
    match = match_decoders(a, b)
    assert match.cosine.sum() == pytest.approx(best)
    assert sorted(match.partner.tolist()) == list(range(6))


def test_stable_share_counts_partners_above_threshold():
    a = unit_rows(40, 64, seed=4)
    b = a.clone()
    b[:10] = unit_rows(10, 64, seed=5)  # random directions: cosine far below 0.7 in 64 dims
    b[10:20] = a[10:20] + 0.4 * unit_rows(10, 64, seed=6)  # perturbed: cosine about 0.93
    match = match_decoders(a, b)
    assert reproduced(match.cosine, 0.7).mean() == pytest.approx(30 / 40)
    assert reproduced(match.cosine, 0.999).mean() == pytest.approx(20 / 40)


def test_fewer_latents_on_the_other_side_leave_some_unmatched():
    match = match_decoders(unit_rows(8, 16, seed=7), unit_rows(5, 16, seed=8))
    assert (match.partner == -1).sum() == 3 and np.isnan(match.cosine).sum() == 3
    assert reproduced(match.cosine, -1.0).sum() == 5  # unmatched never count


def test_stable_share_is_over_live_latents_only():
    cosine = np.array([0.9, 0.9, 0.2, 0.95, np.nan, 0.1])
    firing_count = np.array([5, 0, 3, 0, 0, 1])  # latents 1, 3, 4 dead
    live = live_reproduced(cosine, firing_count, 0.7)
    assert live.tolist() == [True, False, False]  # latents 0, 2, 5: 1 of 3 live latents
    assert reproduced(cosine, 0.7).mean() == pytest.approx(3 / 6)  # counting the dead would give 1/2


def _train_saes_in_place(run: Path, variants: tuple[str, ...], layer: int = 0) -> None:
    """Replace the synthetic run's exact SAEs by trained ones (with training.json), as `randsae run` leaves them."""
    for variant in variants:
        cache = ActivationCache.open(RunDir(run).activations(Site(variant, layer), "train"))
        sae_cfg = SAEConfig("topk", cache.d_model, 32, k=4, metadata={"variant": variant, "layer": layer})
        cfg = TrainConfig(batch_size=256, warmup_steps=2, context_size=ANALYSIS_CONTEXT)
        train_sae(cache, cfg, sae_cfg, seed=0, progress=False).save(run / "saes" / variant / f"layer{layer}")


def test_second_seed_is_trained_once_with_the_first_ones_settings(tmp_path: Path):
    run = build_analysis_run(tmp_path, {"trained": STRUCTURED}, layers=(0,))
    _train_saes_in_place(run, ("trained",))
    folder = run / "saes" / "trained" / "layer0"
    first = load_sae(folder)
    cache = ActivationCache.open(RunDir(run).activations(Site("trained", 0), "train"))
    out = tmp_path / "second"
    second = second_seed_sae(first, folder, cache, out, seed=1, progress=False)
    log = json.loads((out / "training.json").read_text())
    assert log["seed"] == 1 and log["config"] == json.loads((folder / "training.json").read_text())["config"]
    assert not torch.equal(first.W_dec, second.W_dec)
    again = second_seed_sae(first, folder, cache, out, seed=1, progress=False)
    torch.testing.assert_close(again.W_dec, second.W_dec)
    with pytest.raises(UserError, match="is the seed"):
        second_seed_sae(first, folder, cache, tmp_path / "other", seed=0, progress=False)
    (folder / "training.json").unlink()
    with pytest.raises(UserError, match="no training.json"):
        second_seed_sae(first, folder, cache, tmp_path / "third", seed=2, progress=False)


@pytest.mark.slow
def test_stage_reports_seed_stability_per_sae(tmp_path: Path):
    run = build_analysis_run(tmp_path, {"trained": STRUCTURED, "step0": TOKEN_ONLY}, layers=(0,))
    _train_saes_in_place(run, ("trained", "step0"))
    summary = analyze_run(run, AnalysisConfig(seed_stability=True, bootstrap_samples=50), progress=False)
    for record in summary.saes:
        assert 0.0 <= record.seed_stable_share <= 1.0
    with open(run / "analysis" / "latents.csv") as handle:
        rows = list(csv.DictReader(handle))
    cosines = np.array([float(r["seed_match_cosine"]) for r in rows])
    live = np.array([int(r["firing_count"]) > 0 for r in rows])
    assert len(cosines) == 2 * 32 and all(-1.0 <= c <= 1.0 + 1e-9 for c in cosines)
    trained = summary.saes[0]
    assert trained.seed_stable_share == pytest.approx(np.mean(cosines[:32][live[:32]] >= 0.7))
    stable_rows = [row for row in summary.separation if row.metric == "seed_stable_share" and row.layer == "0"]
    assert stable_rows[0].n_trained == trained.n_alive == live[:32].sum()
    assert any(row.metric == "seed_stable_share" for row in summary.separation)
