"""Loading (local folder, Hub cache with a revision, GGUF) and the block-path option; the hook point and truncated
forward of each family are in test_models_families.py."""

import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, MambaConfig, RwkvConfig

from randsae.errors import UserError
from randsae.models.hookpoints import check_layers, find_blocks, replace_residual
from randsae.models.load import EMBEDDED, ModelConfig, is_hub_id, load_model, max_positions


def test_local_folder_loads_model_and_tokenizer(tiny_model_dir):
    lm = load_model(ModelConfig(name=str(tiny_model_dir)), torch.device("cpu"))
    assert lm.model.config.num_hidden_layers == 4
    assert lm.tokenizer("the cat").input_ids == [
        lm.tokenizer.convert_tokens_to_ids("the"),
        lm.tokenizer.convert_tokens_to_ids("cat"),
    ]
    assert find_blocks(lm.model)[0] == "gpt_neox.layers"


def test_a_wrong_blocks_path_names_the_option_to_set():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(2, 2)])

    assert find_blocks(Odd())[0] == find_blocks(Odd(), "stack")[0] == "stack"
    with pytest.raises(UserError, match="no module 'stak'.*model.blocks"):
        find_blocks(Odd(), "stak")


def test_layer_out_of_range_is_a_clear_error():
    check_layers([0, 3], 4)
    with pytest.raises(UserError, match="layer 4 is out of range: the model has 4 blocks"):
        check_layers([1, 4], 4)


def test_replace_residual_changes_downstream_logits_only_inside_the_context(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    _, blocks = find_blocks(model)
    ids = torch.tensor([[0, 5, 9, 12]])
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with replace_residual(blocks[1], torch.zeros_like):
            zeroed = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert not torch.allclose(clean, zeroed)
    torch.testing.assert_close(clean, again)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(ModelConfig(name=str(tmp_path / "missing.gguf")), torch.device("cpu"))
    with pytest.raises(UserError, match="neither a folder"):
        load_model(ModelConfig(name=str(tmp_path / "missing_dir")), torch.device("cpu"))
    assert is_hub_id("EleutherAI/pythia-70m") and not is_hub_id(str(tmp_path)) and not is_hub_id("embedded")


def test_a_damaged_model_file_is_a_clear_error(tmp_path, tiny_model_dir):
    config, weights = tmp_path / "config", tmp_path / "weights"
    shutil.copytree(tiny_model_dir, config)
    shutil.copytree(tiny_model_dir, weights)
    (config / "config.json").write_text("{garbage")
    data = (weights / "model.safetensors").read_bytes()
    (weights / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10, 2) + b"\x05\x00")  # cut in its header
    for folder, reason in ((config, "not a valid JSON file"), (weights, "incomplete metadata")):
        with pytest.raises(UserError, match=f"could not load model {folder}: .*{reason}.*whole Hugging Face model"):
            load_model(ModelConfig(name=str(folder)), torch.device("cpu"))
    with pytest.raises(UserError, match="could not load GGUF file .*model.gguf.*not truncated"):
        load_model(ModelConfig(name=str(tmp_path / "model.gguf")), torch.device("cpu"), progress=False)


def test_max_positions_reads_each_familys_config_key(tiny_model_dir):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=64, vocab_size=10))
    assert max_positions(gpt2) == 64
    assert max_positions(AutoModelForCausalLM.from_pretrained(tiny_model_dir)) == 128
    rwkv = AutoModelForCausalLM.from_config(RwkvConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2))
    assert max_positions(rwkv) == rwkv.config.context_length == 1024
    mamba = AutoModelForCausalLM.from_config(MambaConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1))
    assert max_positions(mamba) is None
    limitless = nn.Module()
    limitless.config = object()
    assert max_positions(limitless) is None


HUB_SCRIPT = """
import sys, torch
from randsae.errors import UserError
from randsae.models.load import ModelConfig, load_model
cfg = ModelConfig(name="acme/tiny", step0_revision="step0")
trained = load_model(cfg, torch.device("cpu"))
step0 = load_model(cfg, torch.device("cpu"), revision=cfg.step0_revision)
a = dict(trained.model.named_parameters())["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"]
b = dict(step0.model.named_parameters())["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"]
print("differ" if not torch.equal(a, b) else "same")
try:
    load_model(ModelConfig(name="acme/tiny"), torch.device("cpu"), revision="step999")
except UserError as error:
    print("error:", error)
"""


def _fake_hub_repo(cache, repo, revisions):
    """A Hugging Face Hub cache holding `repo` at the given {revision: model folder}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    for index, (revision, folder) in enumerate(revisions.items()):
        commit = f"{index + 1:040x}"
        (root / "refs" / revision).write_text(commit)
        shutil.copytree(folder, root / "snapshots" / commit)


def test_hub_id_with_a_step0_revision_loads_through_the_hub_cache(tmp_path, tiny_model_dir):
    from tests.helpers import build_tiny_model

    step0_dir = build_tiny_model(tmp_path / "step0", seed=1)
    _fake_hub_repo(tmp_path / "hub", "acme/tiny", {"main": tiny_model_dir, "step0": step0_dir})
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", HUB_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "differ"
    assert lines[1].startswith("error: could not load model acme/tiny@step999")


@pytest.mark.slow
def test_embedded_gguf_model_is_a_trained_llama():
    lm = load_model(ModelConfig(name=EMBEDDED), torch.device("cpu"))
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.model.config.num_hidden_layers == 30
    text = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome."
    ids = torch.tensor([lm.tokenizer(text).input_ids])
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss.item()
    assert loss < 3.0, "a trained model predicts plain English well (a random one scores ~ln(49152) = 10.8)"
