"""Learning-rate sweep: the kept SAE is the candidate with the best EV on selection rows the metrics leave out."""

import dataclasses
import json

import pytest
import torch

from randsae.analysis import AnalysisConfig, analyze_run
from randsae.data.activations import ActivationCache
from randsae.data.tokens import counted_rows
from randsae.errors import UserError
from randsae.experiment import run_pipeline, selection_windows
from randsae.run_dir import RunDir, SAEKey
from randsae.sae import SAEConfig, TensorSource, TrainConfig, load_sae, train_sae
from randsae.sae.lr_sweep import sweep_lr
from randsae.sae.trainer import explained_variance
from tests.helpers import tiny_config
from tests.test_sae_trainer import D, sparse_activations


def test_sweep_keeps_the_candidate_with_the_best_selection_ev():
    source, selection = TensorSource(sparse_activations(4096)), sparse_activations(600, seed=5)
    cfg = TrainConfig(batch_size=256, warmup_steps=2, lr_sweep=(1e-6, 3e-3, 1e-4))
    sae_cfg = SAEConfig("topk", D, 64, k=4)

    def train(candidate):
        return [train_sae(source, candidate, sae_cfg, seed=1, progress=False)]

    (kept,) = sweep_lr(train, cfg, [selection])
    alone = {lr: train(dataclasses.replace(cfg, lr=lr, lr_sweep=()))[0] for lr in cfg.lr_sweep}
    expected = {lr: explained_variance(result.sae, selection) for lr, result in alone.items()}
    assert [(c.lr, c.explained_variance) for c in kept.log.lr_sweep] == [(lr, expected[lr]) for lr in cfg.lr_sweep]
    best = max(expected, key=expected.__getitem__)
    assert best == 3e-3, "a rate 3000 times smaller barely moves from the initialization in 16 steps"
    assert kept.log.peak_lr == best and kept.log.config.lr == best and kept.log.config.lr_sweep == ()
    assert torch.equal(kept.sae.W_enc, alone[best].sae.W_enc)


def test_lr_sweep_and_lr_are_not_both_set():
    with pytest.raises(UserError, match="train.lr_sweep"):
        TrainConfig(lr=1e-3, lr_sweep=(1e-3, 1e-4))
    with pytest.raises(UserError, match="train.lr_sweep"):
        TrainConfig(lr_sweep=(1e-3, 0.0))


@pytest.mark.parametrize("activations", ["cache", "stream"])
def test_pipeline_sweeps_each_sae_and_evaluates_on_the_other_windows(
    tmp_path, tiny_model_dir, tiny_corpus, activations
):
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained", "control"), layers=(1,))
    train = dataclasses.replace(cfg.train, activations=activations, lr_sweep=(1e-6, 3e-3), curve_tokens=93)
    cfg = dataclasses.replace(cfg, train=train)
    rows = run_pipeline(cfg, tmp_path, progress=False)
    run = RunDir.at(tmp_path)
    for row in rows:
        folder = run.sae(row.key)
        log = json.loads((folder / "training.json").read_text())
        heldout = ActivationCache.open(run.activations(row.key.site, "heldout"))
        counted = counted_rows(run.tokens("heldout")).view(-1, 32)  # no BOS, no document separator
        x = heldout.load().view(-1, 32, 32)[-3:][counted[-3:]]  # the last 3 windows' counted rows
        candidates = {c["lr"]: c["explained_variance"] for c in log["lr_sweep"]}
        assert list(candidates) == [1e-6, 3e-3]
        kept = max(candidates, key=candidates.__getitem__)
        assert log["peak_lr"] == kept and log["config"]["lr"] == kept
        assert candidates[kept] == pytest.approx(explained_variance(load_sae(folder), x), abs=1e-5)
        assert row.n_eval_tokens == counted[:-3].sum(), "the selection windows are left out of the metrics"
        assert not list(folder.glob("*.pt")) and not list(folder.parent.glob("*.pt"))
    assert rows[0].key == SAEKey("trained", 1)
    summary = analyze_run(tmp_path, AnalysisConfig(bootstrap_samples=20, min_token_count=5), progress=False)
    assert any(note.startswith("train.lr_sweep: the SAE EV gap") for note in summary.notes), summary.notes
    with pytest.raises(UserError, match="held-out windows"):
        too_many = dataclasses.replace(train, curve_tokens=32 * 31)
        selection_windows(dataclasses.replace(cfg, train=too_many), heldout)
