"""Shared fixtures: a tiny real Hugging Face model folder (random GPT-NeoX + word-level tokenizer), a small
English corpus on disk, and a whole tiny run directory made by the real pipeline (builders: tests/helpers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import CORPUS, build_tiny_model, tiny_config


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
        (folder / f"part{part}.jsonl").write_text("\n".join(json.dumps({"text": doc}) for doc in docs) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    """A run directory after prepare → harvest → train → evaluate on the tiny model."""
    from randsae.experiment import run_pipeline

    run_dir = tmp_path_factory.mktemp("tiny_run")
    run_pipeline(tiny_config(tiny_model_dir, tiny_corpus), run_dir, progress=False)
    return run_dir
