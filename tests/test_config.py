"""The experiment config: paper defaults, the embedded default as overrides, load-time checks, --set, the
generated key reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from randsae.config import ExperimentConfig, embedded_config_path, load_config
from randsae.toml_config import read_toml

ROOT = Path(__file__).parent.parent


def test_defaults_are_the_papers_experiment():
    cfg = ExperimentConfig()
    assert cfg.model.name == "EleutherAI/pythia-70m" and cfg.layers == (0, 1, 2, 3, 4, 5)
    assert cfg.variants == ("trained", "step0", "rerandomized", "rerandomized_keep_embeddings", "control")
    assert (cfg.tokens.context_size, cfg.tokens.train_tokens, cfg.tokens.heldout_tokens) == (2048, 10**8, 10**7)
    assert (cfg.sae.architecture, cfg.sae.expansion, cfg.sae.k) == ("topk", 64, 32)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps, cfg.train.auxk_coefficient) == (8192, None,
                                                                                                        1000, 0.0)
    assert (cfg.interp.n_latents, cfg.interp.min_examples, cfg.interp.n_negatives) == (100, 200, 100)
    paper = load_config(ROOT / "configs" / "pythia-paper.toml")
    assert paper == dataclasses.replace(cfg, data=paper.data, interp=paper.interp)
    assert paper.data == dataclasses.replace(cfg.data, dataset_config="plain_text")


def test_the_embedded_default_only_overrides():
    """Every key the embedded default's file sets differs from the paper's default."""
    paper, embedded = ExperimentConfig(), load_config()
    for key, value in read_toml(embedded_config_path()).items():
        if isinstance(value, dict):
            for name in value:
                assert getattr(getattr(embedded, key), name) != getattr(getattr(paper, key), name), f"{key}.{name}"
        else:
            assert getattr(embedded, key) != getattr(paper, key), key
