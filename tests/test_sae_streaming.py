"""Streamed SAE training: the shuffle buffer mixes forwards and covers every row as often as configured, and
an interrupted streamed training (the pipeline's, on the tiny model) resumes to the same SAEs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from randsae.analysis.config import AnalysisConfig
from randsae.analysis.stage import analyze_run
from randsae.experiment import run_pipeline
from randsae.run_dir import RunDir, SAEKey
from randsae.sae import TopKSAE
from randsae.sae.streaming import ActivationStream
from randsae.sae.trainer import TrainConfig
from tests.helpers import tiny_config

N_WINDOWS, CONTEXT, FORWARD_WINDOWS = 24, 9, 2


def labelled_forward(first: int, ids):
    """Row value = window * CONTEXT + position, layer 1 = layer 0 + 0.5 (d = 2)."""
    label = (torch.arange(first, first + ids.shape[0])[:, None] * CONTEXT + torch.arange(CONTEXT)).float()
    rows = label[..., None].expand(-1, -1, 2)
    return {0: rows, 1: rows + 0.5}


def test_stream_mixes_forwards_and_covers_every_non_bos_row_once_per_pass():
    passes, batch = 3, 32
    rows_per_pass = N_WINDOWS * (CONTEXT - 1)  # 192: a multiple of the batch
    cfg = TrainConfig(batch_size=batch, total_tokens=passes * rows_per_pass, buffer_tokens=96)
    ids = torch.zeros(N_WINDOWS, CONTEXT, dtype=torch.long)
    stream = ActivationStream(labelled_forward, ids, (0, 1), cfg, FORWARD_WINDOWS, seed=0)
    batches = []
    while stream.rows_to_read > 0 or (stream.leftover is not None and stream.leftover.shape[1]):
        batches += list(stream.next_buffer().split(batch, dim=1))
    assert len(batches) == stream.n_steps == passes * rows_per_pass // batch
    assert all(torch.equal(b[1], b[0] + 0.5) for b in batches)  # the layers' rows stay aligned
    labels = torch.cat([b[0, :, 0] for b in batches]).long()
    window, position = labels // CONTEXT, labels % CONTEXT
    assert (position > 0).all()  # no BOS row
    counts = torch.bincount(labels, minlength=N_WINDOWS * CONTEXT).reshape(N_WINDOWS, CONTEXT)
    assert (counts[:, 1:] == passes).all()
    forwards_per_batch = [len(set((w // FORWARD_WINDOWS).tolist())) for w in window.split(batch)]
    assert min(forwards_per_batch) >= 3  # one forward holds 16 rows, a batch 32: rows come from many


def _sae_weights(run, cfg):
    return {
        (variant, layer): load_file(RunDir.at(run).sae(SAEKey(variant, layer)) / "sae_weights.safetensors")
        for variant in cfg.variants
        for layer in cfg.layers
    }


def test_interrupted_streamed_training_resumes_to_the_uninterrupted_saes(
    tmp_path, monkeypatch, tiny_model_dir, tiny_corpus
):
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=("trained", "control"))
    train = dataclasses.replace(cfg.train, activations="stream", buffer_tokens=512, checkpoint_every_s=0.0)
    cfg = dataclasses.replace(cfg, train=train)
    read_forward = ActivationStream._read_forward
    calls = {"forwards": 0, "kill_at": 0}

    def counted(self):
        calls["forwards"] += 1
        if calls["forwards"] == calls["kill_at"]:
            raise KeyboardInterrupt
        return read_forward(self)

    monkeypatch.setattr(ActivationStream, "_read_forward", counted)
    run_pipeline(cfg, tmp_path / "whole", progress=False)
    whole = RunDir.at(tmp_path / "whole")
    assert not whole.activations(SAEKey("trained", 1).site, "train").exists()  # no train cache
    assert whole.activations(SAEKey("trained", 1).site, "heldout").is_dir()
    uninterrupted = calls["forwards"]

    calls.update(forwards=0, kill_at=20)  # mid-way through the first variant's forwards
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "killed", progress=False)
    assert RunDir.at(tmp_path / "killed").stream_checkpoint(SAEKey("trained", 1)).is_file()
    calls.update(forwards=0, kill_at=0)
    run_pipeline(cfg, tmp_path / "killed", progress=False)
    assert calls["forwards"] < uninterrupted - 15  # resumed from the checkpoint, not from the start
    assert not RunDir.at(tmp_path / "killed").stream_checkpoint(SAEKey("trained", 1)).exists()

    expected, got = _sae_weights(tmp_path / "whole", cfg), _sae_weights(tmp_path / "killed", cfg)
    for key, tensors in expected.items():
        for name, tensor in tensors.items():
            assert torch.equal(got[key][name], tensor), (key, name)

    def curve(run, variant):
        return json.loads((RunDir.at(run).sae(SAEKey(variant, 1)) / "training.json").read_text())["heldout_curve"]

    for variant in cfg.variants:  # the held-out curve so far was checkpointed with the SAEs
        assert len(curve(tmp_path / "whole", variant)) == 16
        assert curve(tmp_path / "killed", variant) == curve(tmp_path / "whole", variant)

    # a checkpoint written under another start recipe (here the decoder's lr) is not resumed: training restarts
    calls.update(forwards=0, kill_at=20)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(TopKSAE, "decoder_lr_scale", 1.0)
        run_pipeline(cfg, tmp_path / "recipe", progress=False)
    calls.update(forwards=0, kill_at=0)
    run_pipeline(cfg, tmp_path / "recipe", progress=False)
    for key, tensors in _sae_weights(tmp_path / "recipe", cfg).items():
        for name, tensor in tensors.items():
            assert torch.equal(expected[key][name], tensor), (key, name)

    # the analysis of a streamed run: the lookup is fit on held-out windows, seed stability skipped
    summary = analyze_run(tmp_path / "whole", AnalysisConfig(seed_stability=True, bootstrap_samples=10), progress=False)
    assert any("token lookup" in note for note in summary.notes)
    assert any("seed stability skipped" in note for note in summary.notes)
    assert {(record.variant, record.layer) for record in summary.saes} == set(expected)
