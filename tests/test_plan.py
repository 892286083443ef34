"""The run plan: estimates against hand-computed figures, `randsae run --plan`, and the disk check."""

import dataclasses
import shutil
from collections import namedtuple

import pytest

from randsae import speed
from randsae.cli import main
from randsae.config import dump_config
from randsae.errors import UserError
from randsae.plan import (
    DISK_MARGIN_BYTES,
    RunShape,
    Speeds,
    StageEstimate,
    check_disk,
    estimate_stages,
    format_plan,
    total_disk,
)
from tests.helpers import tiny_config

SHAPE = RunShape(
    variants=2,
    layers=3,
    train_tokens=1000,
    heldout_tokens=200,
    heldout_fraction=0.2,
    context_size=10,
    skip_bos=True,
    d_model=4,
    d_sae=16,
    n_params=100,
    param_bytes=4,
    activation_bytes=2,
    harvest_batch_windows=5,
    train_batch_tokens=50,
    train_steps=18,
    buffer_tokens=100,
    streamed=False,
    processes=1,
    ce_windows=10,
    chunk_windows=8,
    analysis_max_tokens=150,
    seed_stability=True,
    token_judge=True,
    k=2,
)
SPEEDS = Speeds(forward_s=0.5, sae_step_s=0.1, full_forward_s=1.0, tokenize_tokens_per_s=500.0)


def _stages(shape: RunShape, speeds: Speeds | None = SPEEDS) -> dict[str, StageEstimate]:
    return {stage.name: stage for stage in estimate_stages(shape, speeds)}


def test_estimates_match_the_hand_computed_figures():
    stages = _stages(SHAPE)
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
    # the shuffle buffer's peak (4 x 100 rows), the SAE with Adam, a batch's rows, latents and gradient
    assert stages["train"].memory_bytes == 4 * 100 * 4 * 4 + 4 * 592 + 50 * (4 + 2 * 16) * 4
    # a buffer never holds more than the cache's 1000 rows
    big_buffer = _stages(dataclasses.replace(SHAPE, buffer_tokens=5000))["train"]
    assert big_buffer.memory_bytes == 4 * 1000 * 4 * 4 + 4 * 592 + 50 * (4 + 2 * 16) * 4
    assert stages["interp"].disk_bytes == 2 * 3 * 200 * 2 * (4 + 2 + 2)
    # the first 15 held-out windows analysed per SAE; seed stability retrains each SAE (saved beside it)
    assert (stages["analysis"].tokens, stages["analysis"].disk_bytes) == (2 * 150, 6 * 592)
    assert stages["analysis"].memory_bytes == 4 * 592 + 50 * (4 + 2 * 16) * 4
    assert total_disk(list(stages.values())) == 4800 + 48000 + 9600 + 3552 + 19200 + 3552
    # seconds: a forward of 5 windows (50 tokens) takes 0.5 s
    assert stages["harvest train"].seconds == pytest.approx(2 * 1000 / 50 * 0.5)
    assert stages["harvest heldout"].seconds == pytest.approx(2 * 200 / 50 * 0.5)
    assert stages["train"].seconds == pytest.approx(6 * 18 * 0.1)
    # 2 CE batches of (clean + 2 per layer) full forwards, and 4 SAE-sized steps over the held-out tokens per layer
    assert stages["evaluate"].seconds == pytest.approx(2 * (2 * (1 + 2 * 3) * 1.0 + 3 * 4 * 0.1))
    assert stages["interp"].seconds == pytest.approx(2 * 3 * 4 * 0.1)
    # text is tokenized until the held-out share (0.2) fills the train split: 1000 / 0.8 tokens at 500 a second
    assert stages["tokenize"].seconds == pytest.approx(1250 / 500)
    # per SAE: 3 steps' worth of encoding (150 tokens) and the 18 steps of its second-seed training
    assert stages["analysis"].seconds == pytest.approx(6 * (3 + 18) * 0.1)


def test_streamed_training_writes_no_train_cache_and_shares_its_forwards_over_the_processes():
    stages = _stages(dataclasses.replace(SHAPE, streamed=True, processes=2))
    assert "harvest train" not in stages
    # 18 x 50 rows read, 9 (BOS left out) a window: 100 windows forwarded per variant, 20 forwards of 5 windows
    streamed = stages["stream train"]
    assert (streamed.tokens, streamed.disk_bytes, streamed.memory_bytes) == (2 * 100 * 10, 0, 400 + 50 * 4 * 4 * 5)
    assert streamed.seconds == pytest.approx(2 * 20 * 0.5 / 2)
    assert stages["train"].seconds == pytest.approx(6 * 18 * 0.1 / 2)
    # per process: the model and a forward's activations, 2 batches of 25 rows buffered for 3 layers (twice at
    # its peak), every layer's SAE with Adam, and its 25 rows of a batch
    assert stages["train"].memory_bytes == (400 + 50 * 4 * 4 * 5) + 2 * 50 * 3 * 4 * 4 + 3 * 4 * 592 + 25 * 36 * 4
    # a buffer holds no more than the 18 batches trained on
    big_buffer = _stages(dataclasses.replace(SHAPE, streamed=True, processes=2, buffer_tokens=5000))["train"]
    assert big_buffer.memory_bytes == (400 + 50 * 4 * 4 * 5) + 2 * 18 * 25 * 3 * 4 * 4 + 3 * 4 * 592 + 25 * 36 * 4
    # the token lookup takes the held-out windows after the analysed ones (at most 10 of 20); no seed stability
    assert (stages["analysis"].tokens, stages["analysis"].disk_bytes) == (2 * 100, 0)
    assert stages["analysis"].seconds == pytest.approx(6 * 2 * 0.1)
    assert total_disk(list(stages.values())) == 4800 + 9600 + 3552 + 19200


def test_sae_seed_replicates_multiply_the_saes_not_the_caches():
    plain, seeded = _stages(SHAPE), _stages(dataclasses.replace(SHAPE, sae_seeds=2))
    for stage in ("harvest train", "harvest heldout"):
        assert seeded[stage] == plain[stage], "the seeds of a model share its activation caches"
    assert (seeded["train"].tokens, seeded["train"].disk_bytes) == (
        2 * plain["train"].tokens,
        2 * plain["train"].disk_bytes,
    )
    assert seeded["train"].seconds == pytest.approx(2 * plain["train"].seconds)
    assert seeded["interp"].disk_bytes == 2 * plain["interp"].disk_bytes
    streamed = _stages(dataclasses.replace(SHAPE, streamed=True, sae_seeds=2))["stream train"]
    assert streamed.tokens == 2 * _stages(dataclasses.replace(SHAPE, streamed=True))["stream train"].tokens


def test_times_that_were_not_measured_are_left_out():
    stages = _stages(
        dataclasses.replace(SHAPE, token_judge=False), dataclasses.replace(SPEEDS, tokenize_tokens_per_s=None)
    )
    assert stages["tokenize"].seconds is None and stages["interp"].seconds is None
    assert stages["analysis"].seconds is not None
    assert all(stage.seconds is None for stage in _stages(SHAPE, None).values())


def test_a_streamed_paper_run_needs_disk_for_its_heldout_caches_not_its_train_caches():
    """The paper's sizes: Pythia-70m (d 512), 6 layers, 5 variants, 100M + 10M tokens in windows of 2048,
    bf16 activations, TopK with expansion 64 and k 32."""
    train, heldout = 100_000_000 // 2048 * 2048, 10_000_000 // 2048 * 2048
    paper = dataclasses.replace(
        SHAPE, variants=5, layers=6, train_tokens=train, heldout_tokens=heldout, heldout_fraction=0.08,
        context_size=2048, d_model=512, d_sae=64 * 512, n_params=70_000_000, harvest_batch_windows=16,
        train_batch_tokens=8192, train_steps=train // 8192, buffer_tokens=2**18, ce_windows=64, k=32,
    )  # fmt: skip
    heldout_caches = 5 * 6 * heldout * 512 * 2
    rest = (train + heldout) * 4 + 5 * 6 * (2 * 512 * 32768 + 32768 + 512) * 4 + 5 * 6 * heldout * 32 * (4 + 4 + 2)
    streamed = total_disk(estimate_stages(dataclasses.replace(paper, streamed=True, seed_stability=False), None))
    assert streamed == heldout_caches + rest and 400e9 < streamed < 410e9
    check_disk(need=streamed, free=10**12, out="runs/paper")
    cached = total_disk(estimate_stages(dataclasses.replace(paper, seed_stability=False), None))
    assert cached == streamed + 5 * 6 * train * 512 * 2
    with pytest.raises(UserError, match="needs about 3.5 TB of disk"):
        check_disk(need=cached, free=10**12, out="runs/paper")


def test_the_plan_table_and_the_disk_check():
    table = format_plan(estimate_stages(SHAPE, None))
    assert "harvest heldout" in table and "88.7 KB" in table.splitlines()[-1]
    assert "an LLM judge's replies not included" in table.splitlines()[0]
    check_disk(need=1, free=DISK_MARGIN_BYTES + 1, out="runs/x")
    with pytest.raises(UserError, match="needs about 2.0 GB of disk but runs/x has"):
        check_disk(need=2 * 10**9, free=DISK_MARGIN_BYTES + 10**9, out="runs/x")


@pytest.fixture
def tiny_toml(tmp_path, tiny_model_dir, tiny_corpus):
    path = tmp_path / "tiny.toml"
    path.write_text(dump_config(tiny_config(tiny_model_dir, tiny_corpus)))
    return path


@pytest.mark.parametrize("activations", ["cache", "stream"])
def test_plan_prints_the_stages_and_writes_nothing(tmp_path, tiny_toml, capsys, activations):
    out = tmp_path / "run"
    argv = ["run", "--config", str(tiny_toml), "--out", str(out), "--plan", "--quiet"]
    assert main([*argv, "--set", f'train.activations="{activations}"']) == 0
    printed = capsys.readouterr().out
    train_rows = "harvest train" if activations == "cache" else "stream train"
    for stage in ("tokenize", train_rows, "harvest heldout", "train", "evaluate", "interp", "analysis", "total"):
        assert f"\n{stage} " in printed
    lines = {line.split("  ")[0]: line for line in printed.splitlines()}
    assert lines["tokenize"].endswith(" s"), "the tokenizer's measured time"
    assert "free for" in printed
    assert not out.exists()


def test_the_tokenizer_is_timed_on_the_first_documents(monkeypatch):
    clock = iter([10.0, 12.0])
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(clock))
    documents = iter(["x" * 100_000] * 5)

    def tokenizer(texts, add_special_tokens):
        assert not add_special_tokens
        return {"input_ids": [[1, 2, 3]] * len(texts)}

    assert speed.tokens_per_second(tokenizer, documents) == 2 * 3 / 2.0  # 2 documents make 200,000 characters
    assert len(list(documents)) == 3, "read no further"
    assert speed.tokens_per_second(tokenizer, iter([])) is None


def test_a_run_needing_more_disk_than_is_free_stops_before_writing(tmp_path, tiny_toml, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    out = tmp_path / "run"
    assert main(["run", "--config", str(tiny_toml), "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "of disk but" in error and "--out" in error
    assert not out.exists()
