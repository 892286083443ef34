"""Data-parallel streamed training: 2 gloo processes under torchrun train the SAEs one process trains on
the same global batches (each the ranks' local batches in rank order), and a run whose rank dies resumes
from rank 0's checkpoint to the same SAEs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from randsae.errors import UserError
from randsae.sae.streaming import ActivationStream, train_streaming
from tests import ddp_worker

WORLD = 2
ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside python")


class ShardsInOneProcess(ActivationStream):
    """The global batches of a WORLD-process run, read in one process: the reference."""

    def __init__(self) -> None:
        super().__init__(ddp_worker.forward, torch.zeros(1, 2), (0, 1), ddp_worker.CFG, 3, seed=0)
        self.shards = [ddp_worker.stream(rank, WORLD) for rank in range(WORLD)]
        self.n_tokens, self.n_steps = self.shards[0].n_tokens, self.shards[0].n_steps

    def next_buffer(self) -> Tensor:
        parts = torch.stack([shard.next_buffer() for shard in self.shards])  # [W, L, k * b, d]
        w, n_layers, rows, d = parts.shape
        per_rank = parts.reshape(w, n_layers, -1, self.shards[0].batch_rows, d)
        return per_rank.permute(1, 2, 0, 3, 4).reshape(n_layers, w * rows, d)


def torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={WORLD}", "-m", "tests.ddp_worker", str(out), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def assert_same_saes(path: Path, reference: list[dict[str, Tensor]]) -> None:
    saes = torch.load(path, weights_only=True)
    for sae, expected in zip(saes, reference, strict=True):
        for name, tensor in expected.items():
            torch.testing.assert_close(sae[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_two_processes_train_the_one_process_saes_and_a_dead_rank_resumes(tmp_path):
    results = train_streaming(ShardsInOneProcess(), ddp_worker.SAE_CFGS, seed=0, progress=False)
    reference = [result.sae.state_dict() for result in results]
    one_process = [
        r.sae.state_dict() for r in train_streaming(ddp_worker.stream(), ddp_worker.SAE_CFGS, progress=False)
    ]
    assert not torch.allclose(one_process[0]["W_dec"], reference[0]["W_dec"])  # other batches: other SAEs

    whole = torchrun(tmp_path / "whole.pt")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert_same_saes(tmp_path / "whole.pt", reference)
    assert not (tmp_path / "whole.pt.ckpt").exists()

    killed = torchrun(tmp_path / "resumed.pt", "4")
    assert killed.returncode != 0 and not (tmp_path / "resumed.pt").exists()
    assert (tmp_path / "resumed.pt.ckpt").is_file()  # rank 0 checkpointed before rank 1 died
    shutil.copy(tmp_path / "resumed.pt.ckpt", tmp_path / "kept.ckpt")
    resumed = torchrun(tmp_path / "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_saes(tmp_path / "resumed.pt", reference)
    step = torch.load(tmp_path / "kept.ckpt", weights_only=True)["saes"][0]["step"]
    assert 0 < step < ddp_worker.stream().n_steps  # it did resume mid-way


def test_a_world_size_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(UserError, match="does not split evenly over 3 processes"):
        ddp_worker.stream(rank=0, world_size=3)
