"""The control's noise: no held-out or CE/KL-evaluation forward repeats noise drawn for training, also when
a run is resumed after its train split is harvested. The control ignores its tokens, so repeated noise
would mean held-out activations equal to train ones."""

import dataclasses
import zlib

import numpy as np
import pytest
import torch

import randsae.experiment as experiment
from randsae.data.activations import ActivationCache
from randsae.experiment import run_pipeline
from randsae.models.variants import NoiseEmbedding
from randsae.run_dir import RunDir, Site
from randsae.seeds import derived_seed
from tests.helpers import tiny_config


class Killed(Exception):
    """Stands for the process being killed."""


def _control_config(model_dir, corpus, activations="cache"):
    cfg = tiny_config(model_dir, corpus, variants=("control",))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, activations=activations))


def _row_set(rows: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in rows.reshape(-1, rows.shape[-1])}


def _cache(run, layer: int, split: str) -> torch.Tensor:
    return ActivationCache.open(RunDir(run).activations(Site("control", layer), split)).load()


@pytest.fixture
def noise_by_stage(monkeypatch):
    """Every noise row the control's embedding draws, listed under the stage that drew it."""
    drawn: dict[str, list[torch.Tensor]] = {}
    stage = ["outside any stage"]
    forward = NoiseEmbedding.forward

    def recording(self, input_ids):
        noise = forward(self, input_ids)
        drawn.setdefault(stage[0], []).append(noise.reshape(-1, noise.shape[-1]).clone())
        return noise

    def during(name_of, function):
        def wrapped(*args, **kwargs):
            stage[0] = name_of(*args, **kwargs)
            try:
                return function(*args, **kwargs)
            finally:
                stage[0] = "outside any stage"

        return wrapped

    monkeypatch.setattr(NoiseEmbedding, "forward", recording)
    monkeypatch.setattr(experiment, "harvest", during(lambda *a, desc, **k: desc.split()[-1], experiment.harvest))
    monkeypatch.setattr(experiment, "train_streaming", during(lambda *a, **k: "train", experiment.train_streaming))
    monkeypatch.setattr(
        experiment, "downstream_metrics", during(lambda *a, **k: "downstream", experiment.downstream_metrics)
    )
    return drawn


@pytest.mark.parametrize("activations", ["cache", "stream"])
def test_heldout_and_evaluation_noise_never_repeat_training_noise(
    tmp_path, tiny_model_dir, tiny_corpus, noise_by_stage, activations
):
    run_pipeline(_control_config(tiny_model_dir, tiny_corpus, activations), tmp_path, progress=False)
    assert set(noise_by_stage) == {"train", "heldout", "downstream"}
    noise = {stage: torch.cat(parts) for stage, parts in noise_by_stage.items()}
    train = _row_set(noise["train"])
    assert not _row_set(noise["heldout"]) & train
    assert not _row_set(noise["downstream"]) & train, "the CE/KL evaluation draws noise of its own"
    assert not _row_set(noise["downstream"]) & _row_set(noise["heldout"])
    if activations == "stream":
        # 4,096 training tokens are more than two passes over the 64 windows: a later pass repeats the
        # first's noise, as a cached training rereads its cache (and the checks above would see repeats).
        assert len(train) == 64 * 32 < noise["train"].shape[0]
    for layer in (1, 3):
        heldout = _row_set(_cache(tmp_path, layer, "heldout"))
        assert len(heldout) == 1024
        if activations == "cache":
            assert not heldout & _row_set(_cache(tmp_path, layer, "train"))


def test_a_run_killed_after_its_train_harvest_resumes_with_the_same_disjoint_noise(
    tmp_path, monkeypatch, tiny_model_dir, tiny_corpus
):
    cfg = _control_config(tiny_model_dir, tiny_corpus)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_pipeline(cfg, whole, progress=False)
    harvest = experiment.harvest

    def killed_at_heldout(*args, desc, **kwargs):
        if desc.endswith("heldout"):
            raise Killed
        return harvest(*args, desc=desc, **kwargs)

    monkeypatch.setattr(experiment, "harvest", killed_at_heldout)
    with pytest.raises(Killed):
        run_pipeline(cfg, killed, progress=False)
    assert ActivationCache.open(RunDir(killed).activations(Site("control", 1), "train")).manifest.complete
    monkeypatch.setattr(experiment, "harvest", harvest)
    run_pipeline(cfg, killed, progress=False)
    for layer in (1, 3):
        train, heldout = _cache(killed, layer, "train"), _cache(killed, layer, "heldout")
        assert torch.equal(train, _cache(whole, layer, "train"))
        assert torch.equal(heldout, _cache(whole, layer, "heldout")), "the resumed harvest draws the same noise"
        assert not _row_set(heldout) & _row_set(train)


def test_a_draw_index_is_mixed_in_apart_from_the_stream_name():
    """Names are hashed to 32 bits: the index is a number of its own, and a stream without one keeps its seed."""
    seeds = {derived_seed(42, "control noise train", index) for index in range(10_000)}
    seeds |= {derived_seed(42, "control noise heldout", index) for index in range(10_000)}
    assert len(seeds) == 20_000
    assert derived_seed(42, "toy_data") == int(
        np.random.SeedSequence([42, zlib.crc32(b"toy_data")]).generate_state(1, dtype=np.uint64)[0]
    )
    assert derived_seed(42, "toy_data") not in {derived_seed(42, "toy_data", index) for index in range(100)}
