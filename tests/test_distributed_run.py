"""`torchrun --nproc_per_node 2 -m randsae.cli run`: two gloo processes train the run's SAEs data-parallel
from streamed shards; rank 0 alone writes; a run killed mid-training resumes to the uninterrupted SAEs.

(That the data-parallel SAEs equal one process's on the same global batches is tests/test_sae_distributed.py.)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import randsae
from randsae.config import dump_config
from randsae.errors import UserError
from randsae.experiment import activation_mode
from randsae.metrics.results import load_metrics
from randsae.run_dir import RunDir, SAEKey
from tests.helpers import tiny_config

TORCHRUN = Path(sys.executable).with_name("torchrun")
VARIANTS = ("trained", "control")


def _config(tmp_path: Path, tiny_model_dir: Path, tiny_corpus: Path) -> tuple[Path, object]:
    cfg = tiny_config(tiny_model_dir, tiny_corpus, variants=VARIANTS)
    train = dataclasses.replace(
        cfg.train, activations="stream", total_tokens=16384, buffer_tokens=512, checkpoint_every_s=0.0
    )
    cfg = dataclasses.replace(cfg, train=train)
    path = tmp_path / "experiment.toml"
    path.write_text(dump_config(cfg))
    return path, cfg


def _torchrun(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(randsae.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "randsae.cli", "run"]
    command += ["--config", str(config), "--out", str(out), "--quiet", "--skip", "interpret", "analyze", "report"]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _sae_weights(run: RunDir, cfg) -> dict[SAEKey, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    keys = [SAEKey(variant, layer) for variant in cfg.variants for layer in cfg.layers]
    return {key: load_file(run.sae(key) / "sae_weights.safetensors") for key in keys}


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside python")
def test_two_processes_run_the_pipeline_and_a_killed_run_resumes(tmp_path, tiny_model_dir, tiny_corpus):
    config, cfg = _config(tmp_path, tiny_model_dir, tiny_corpus)
    whole = _torchrun(config, tmp_path / "whole")
    output, _ = whole.communicate(timeout=300)
    assert whole.returncode == 0, output
    run = RunDir(tmp_path / "whole")
    assert [(row.variant, row.layer) for row in load_metrics(run)] == [(v, n) for v in VARIANTS for n in cfg.layers]
    assert not run.activations(SAEKey("trained", 1).site, "train").exists(), "train activations are streamed"
    assert not run.stream_checkpoint(SAEKey("trained", 1)).exists() and not list(run.root.rglob("*.tmp"))
    assert output.count("randsae run →") == 1, "rank 0 alone speaks"

    killed = _torchrun(config, tmp_path / "killed")
    checkpoint = RunDir(tmp_path / "killed").stream_checkpoint(SAEKey("trained", 1))
    deadline = time.monotonic() + 240
    while not checkpoint.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    shutil.copy(checkpoint, tmp_path / "kept.pt")  # the state the kill leaves
    os.killpg(killed.pid, signal.SIGKILL)  # torchrun and both ranks, at once
    killed.communicate(timeout=60)
    step = torch.load(tmp_path / "kept.pt", weights_only=True)["saes"][0]["step"]
    assert 0 < step < cfg.train.total_tokens // cfg.train.batch_size, "killed mid-way through training"

    resumed = _torchrun(config, tmp_path / "killed")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    expected, got = _sae_weights(run, cfg), _sae_weights(RunDir(tmp_path / "killed"), cfg)
    for key, tensors in expected.items():
        for name, tensor in tensors.items():
            assert torch.equal(got[key][name], tensor), (key, name)
    assert load_metrics(RunDir(tmp_path / "killed")) == load_metrics(run)


def test_cached_training_with_several_processes_is_refused_and_auto_streams(tmp_path, tiny_model_dir, tiny_corpus):
    cfg = tiny_config(tiny_model_dir, tiny_corpus)
    auto = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, activations="auto"))
    assert activation_mode(auto, 2048, 64, processes=2) == "stream"
    cached = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, activations="cache"))
    with pytest.raises(UserError, match="cannot train with 2 processes"):
        activation_mode(cached, 2048, 64, processes=2)
