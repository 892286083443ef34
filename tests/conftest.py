"""Shared fixtures: a tiny real Hugging Face model folder (random GPT-NeoX + word-level tokenizer), a small
English corpus on disk, and a whole tiny run directory made by the real pipeline."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))  # test helpers import each other by module name

CORPUS = """The cat sat on the mat and looked at the dog. The dog ran to the park with a red ball.
A small bird sang in the tall tree while the sun rose over the quiet town.
Children played near the river and the water was cold and clear in the morning.
The old man read a book about ships, stars and the long roads of the north.
In the winter the snow fell on the roofs and the streets of the city were white.
She wrote a letter to her friend and walked to the post office before noon.
The teacher asked the students to open their books and read the first page aloud.
Farmers planted wheat in the spring and harvested it at the end of the summer.
"""


def _words() -> list[str]:
    return sorted(set(re.findall(r"\w+|[^\w\s]", CORPUS)))


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 4-block GPT-NeoX with a word-level tokenizer, saved like a Hub model folder."""
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{word: i + 2 for i, word in enumerate(_words())}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", unk_token="<unk>")
    config = GPTNeoXConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
                           tie_word_embeddings=False)
    torch.manual_seed(seed)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Text files whose documents are the corpus lines, repeated with numbers so there is enough text."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = [line for line in CORPUS.splitlines() if line]
    for part in range(4):
        docs = [f"{lines[(i + part) % len(lines)]} {lines[(3 * i + part) % len(lines)]}" for i in range(60)]
        (folder / f"part{part}.jsonl").write_text(
            "\n".join('{"text": "%s"}' % doc.replace('"', "'") for doc in docs) + "\n")
    return folder


def tiny_config(model_dir: Path, corpus: Path, **overrides):
    """A small experiment on the tiny model: 2 layers, 4 variants, seconds to run."""
    from randsae.config import EvalConfig, ExperimentConfig, SAEShape
    from randsae.data.text import TextConfig
    from randsae.data.tokens import TokenConfig
    from randsae.models.load import ModelConfig
    from randsae.sae.trainer import TrainConfig

    cfg = ExperimentConfig(
        layers=(1, 3), variants=("trained", "rerandomized", "rerandomized_keep_embeddings", "control"),
        device="cpu", activation_dtype="float32", model=ModelConfig(name=str(model_dir)),
        data=TextConfig(source=str(corpus / "*.jsonl")),
        tokens=TokenConfig(context_size=32, train_tokens=2048, heldout_tokens=1024, heldout_fraction=0.3),
        sae=SAEShape(expansion=4, k=4), train=TrainConfig(batch_size=256, total_tokens=4096, warmup_steps=2),
        eval=EvalConfig(ce_windows=4, batch_windows=4))
    return dataclasses.replace(cfg, **overrides)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    """A run directory after prepare → harvest → train → evaluate on the tiny model."""
    from randsae.experiment import run_pipeline

    run_dir = tmp_path_factory.mktemp("tiny_run")
    run_pipeline(tiny_config(tiny_model_dir, tiny_corpus), run_dir, progress=False)
    return run_dir
