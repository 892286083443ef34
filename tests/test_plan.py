"""The run plan: estimates against hand-computed figures, `randsae run --plan`, and the disk check."""

import shutil
from collections import namedtuple

import pytest

from randsae.cli import main
from randsae.config import dump_config
from randsae.errors import UserError
from randsae.plan import DISK_MARGIN_BYTES, RunShape, Speeds, check_disk, estimate_stages, format_plan, total_disk
from tests.helpers import tiny_config

SHAPE = RunShape(
    variants=2,
    layers=3,
    train_tokens=1000,
    heldout_tokens=200,
    context_size=10,
    d_model=4,
    d_sae=16,
    n_params=100,
    param_bytes=4,
    activation_bytes=2,
    harvest_batch_windows=5,
    train_batch_tokens=50,
    train_steps=18,
    ce_windows=10,
    chunk_windows=8,
    k=2,
)


def test_estimates_match_the_hand_computed_figures():
    stages = {
        stage.name: stage for stage in estimate_stages(SHAPE, Speeds(forward_s=0.5, sae_step_s=0.1, full_forward_s=1.0))
    }
    assert SHAPE.sae_bytes == (2 * 4 * 16 + 16 + 4) * 4 == 592
    # tokens, disk bytes, memory bytes per stage
    assert (stages["tokenize"].tokens, stages["tokenize"].disk_bytes, stages["tokenize"].memory_bytes) == (
        1200,
        4800,
        400 + 8 * 10 * 36,
    )
    assert (stages["harvest train"].tokens, stages["harvest train"].disk_bytes) == (2000, 2 * 3 * 1000 * 4 * 2)
    assert stages["harvest train"].memory_bytes == 400 + 50 * 4 * 4 * (3 + 2)
    assert stages["harvest heldout"].disk_bytes == 2 * 3 * 200 * 4 * 2
    assert (stages["train"].tokens, stages["train"].disk_bytes) == (2 * 3 * 18 * 50, 6 * 592)
    assert stages["train"].memory_bytes == 4 * 592 + 50 * (4 + 2 * 16) * 4
    assert stages["interp"].disk_bytes == 2 * 3 * 200 * 2 * (4 + 2 + 2)
    assert total_disk(list(stages.values())) == 4800 + 48000 + 9600 + 3552 + 19200
    # seconds: 24 forwards per variant (1200 tokens / 50 a batch), shared by the splits by their tokens
    assert stages["harvest train"].seconds == pytest.approx(2 * 24 * 0.5 * 1000 / 1200)
    assert stages["harvest heldout"].seconds == pytest.approx(2 * 24 * 0.5 * 200 / 1200)
    assert stages["train"].seconds == pytest.approx(6 * 18 * 0.1)
    # 2 CE batches of (clean + 2 per layer) full forwards, and 4 SAE-sized steps over the held-out tokens per layer
    assert stages["evaluate"].seconds == pytest.approx(2 * (2 * (1 + 2 * 3) * 1.0 + 3 * 4 * 0.1))
    assert stages["interp"].seconds == pytest.approx(2 * 3 * 4 * 0.1)
    assert stages["tokenize"].seconds is None and stages["analysis"].seconds is None


def test_the_plan_table_and_the_disk_check():
    table = format_plan(estimate_stages(SHAPE, None))
    assert "harvest heldout" in table and "85.2 KB" in table.splitlines()[-1]
    check_disk(need=1, free=DISK_MARGIN_BYTES + 1, out="runs/x")
    with pytest.raises(UserError, match="needs about 2.0 GB of disk but runs/x has"):
        check_disk(need=2 * 10**9, free=DISK_MARGIN_BYTES + 10**9, out="runs/x")


@pytest.fixture
def tiny_toml(tmp_path, tiny_model_dir, tiny_corpus):
    path = tmp_path / "tiny.toml"
    path.write_text(dump_config(tiny_config(tiny_model_dir, tiny_corpus)))
    return path


def test_plan_prints_the_stages_and_writes_nothing(tmp_path, tiny_toml, capsys):
    out = tmp_path / "run"
    assert main(["run", "--config", str(tiny_toml), "--out", str(out), "--plan", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for stage in ("tokenize", "harvest train", "harvest heldout", "train", "evaluate", "interp", "analysis", "total"):
        assert f"\n{stage} " in printed
    assert " s " in printed or printed.count(" s\n") > 0, "a measured time"
    assert "free for" in printed
    assert not out.exists()


def test_a_run_needing_more_disk_than_is_free_stops_before_writing(tmp_path, tiny_toml, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    out = tmp_path / "run"
    assert main(["run", "--config", str(tiny_toml), "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "of disk but" in error and "--out" in error
    assert not out.exists()
