"""The paper's config, with only its sizes scaled down, runs end to end through the streamed path on every
submission: a Pythia-70m-shaped model (6 blocks, d 512, 8 heads, context 2048) from local files, local
text, two variants, bf16 activations as the paper's defaults set, all six layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from randsae.cli import main
from randsae.metrics.results import load_metrics
from randsae.run_dir import RunDir, SAEKey, Site
from tests.helpers import CORPUS, build_tiny_model

PAPER_CONFIG = Path(__file__).parents[1] / "configs" / "pythia-paper.toml"


@pytest.fixture(scope="module")
def pythia_shaped(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, corpus folder): Pythia-70m's shape with random weights and the tests' word tokenizer."""
    root = tmp_path_factory.mktemp("pythia_shaped")
    model = build_tiny_model(root / "model")
    config = GPTNeoXConfig.from_pretrained(model)
    config.hidden_size, config.num_hidden_layers, config.num_attention_heads = 512, 6, 8
    config.intermediate_size, config.max_position_embeddings = 2048, 2048
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(model)
    lines = [line for line in CORPUS.splitlines() if line]
    documents = [" ".join(lines[(i * 7 + j) % len(lines)] for j in range(12)) for i in range(400)]
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "part.jsonl").write_text("\n".join(json.dumps({"text": text}) for text in documents) + "\n")
    return model, corpus


@pytest.mark.slow
def test_the_paper_config_scaled_down_runs_through_the_streamed_path(tmp_path, pythia_shaped):
    model, corpus = pythia_shaped
    out = tmp_path / "run"
    sizes = [
        f"model.name={model}",
        f"data.source={corpus}/*.jsonl",
        'variants=["trained","rerandomized"]',
        "tokens.train_tokens=40960",
        "tokens.heldout_tokens=8192",
        "tokens.heldout_fraction=0.1",
        "sae.expansion=8",
        'train.activations="stream"',
        "eval.ce_windows=1",
        "eval.batch_windows=1",
        "interp.judge=token",
        'interp.model=""',
        "interp.n_latents=20",
        "interp.min_examples=20",
    ]
    argv = ["run", "--config", str(PAPER_CONFIG), "--out", str(out), "--quiet"]
    assert main([*argv, *(item for size in sizes for item in ("--set", size))]) == 0
    run = RunDir(out)
    rows = load_metrics(run)
    assert [(row.variant, row.layer) for row in rows] == [
        (v, layer) for v in ("trained", "rerandomized") for layer in range(6)
    ]
    assert all(row.l0 == pytest.approx(32.0) and row.d_sae == 4096 for row in rows)
    record = json.loads((run.sae(SAEKey("rerandomized", 5)) / "training.json").read_text())
    assert record["config"]["activations"] == "stream"
    assert not run.activations(Site("trained", 0), "train").exists(), "no train activation touched the disk"
    manifest = json.loads((run.activations(Site("trained", 0), "heldout") / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16" and manifest["context_size"] == 2048
    assert run.analysis_json.is_file() and run.report.is_file()
