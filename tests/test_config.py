"""The experiment config: paper defaults, the embedded default as overrides, load-time checks, --set, the
generated key reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomli_w

from randsae.cli import main
from randsae.config import ExperimentConfig, embedded_config_path, load_config
from randsae.errors import UserError
from randsae.toml_config import apply_overrides, read_toml

ROOT = Path(__file__).parent.parent

MISTAKES: tuple[tuple[str, ...], ...] = (
    ("layers=[]",), ("layers=[3, 3]",), ("layers=[-1]",), ('layers="3"',),
    ('variants=["trained", "shuffled"]',), ('variants=["trained", "trained"]',), ('variants=["trained", "step0"]',),
    ("device=gpu",), ("activation_dtype=fp16",), ("activation_dtype=int8",),
    ('model.name=""',), ('model.revision=""',), ("model.dtype=fp16",),
    ('data.source=""',), ('data.dataset_config=""',), ('data.column=""',),
    ("tokens.context_size=1",), ("tokens.train_tokens=0",), ("tokens.heldout_tokens=100",),
    ("tokens.heldout_fraction=1",),
    ("variant.init_scale=0",),
    ("sae.architecture=topk2",), ("sae.expansion=0",), ("sae.k=0",), ('sae.k="16"',), ("sae.l1_coefficient=-1",),
    ("train.batch_size=0",), ("train.n_epochs=0",), ("train.buffer_tokens=0",), ("train.dead_tokens_threshold=0",),
    ("train.log_points=0",), ("train.total_tokens=100",), ("train.lr=0",), ("train.context_size=128",),
    ("train.topk_selection_dtype=int8",), ("train.warmup_steps=-1",), ("train.auxk_coefficient=-1",),
    ("train.checkpoint_every_s=-1",), ("train.max_grad_norm=0",),
    ("eval.ce_windows=0",), ("eval.ce_windows=64",), ("eval.batch_windows=0",),
    ("interp.n_latents=0",), ("interp.window_size=48",), ("interp.n_negatives=-1",), ("interp.judge=gpt",),
    ("interp.explainer=human",), ("interp.api=rest",), ("interp.explainer=llm",), ("interp.judge=http",),
    ("interp.judge=http", "interp.model=m", "interp.base_url=localhost:8000"), ("interp.highlight_threshold=1.5",),
    ("interp.max_failure_fraction=2",), ("interp.timeout_s=0",),
    ("analysis.single_token_threshold=1.5",), ("analysis.top_windows=0",),
    ("analysis.seed_stability=true", "analysis.stability_seed=0"),
)
"""Mistakes as `randsae run --set` arguments; each is a load-time error naming the key of its last assignment."""


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


@pytest.mark.parametrize("mistake", MISTAKES, ids=" ".join)
def test_a_bad_value_is_a_one_line_error_naming_its_key(tmp_path, mistake):
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(apply_overrides(read_toml(embedded_config_path()), mistake)))
    with pytest.raises(UserError) as raised:
        load_config(path)
    message = str(raised.value)
    assert mistake[-1].partition("=")[0] in message and "\n" not in message
    with pytest.raises(UserError) as through_set:
        load_config(None, mistake)
    assert str(through_set.value) == message


def test_set_reads_toml_values_and_bare_words():
    raw = apply_overrides({"sae": {"expansion": 8}}, [
        "sae.k=16", "layers=[1, 2]", "model.name=EleutherAI/pythia-160m", "device=cuda:1", 'data.source="a b"',
        "train.lr=1e-3", "analysis.seed_stability=true", "interp.model="])
    assert raw == {"sae": {"expansion": 8, "k": 16}, "layers": [1, 2], "model": {"name": "EleutherAI/pythia-160m"},
                   "device": "cuda:1", "data": {"source": "a b"}, "train": {"lr": 1e-3},
                   "analysis": {"seed_stability": True}, "interp": {"model": ""}}
    cfg = load_config(None, ["sae.k=16", "layers=[1,2]"])
    assert (cfg.sae.k, cfg.layers) == (16, (1, 2))
    assert dataclasses.replace(cfg, sae=load_config().sae, layers=load_config().layers) == load_config()


@pytest.mark.parametrize("assignment, message", [
    ("sae.k", "is not key=value"), ("=3", "is not key=value"), ("sae..k=1", "is not key=value"),
    ("sae k=1", "is not key=value"), ("layers=[1, 2", "is not a TOML value"), ('model.name="x', "is not a TOML value"),
    ("layers.x=1", "layers is not a table"), ("sae.k=1\nlayers=[]", "is not a TOML value"),
])
def test_a_malformed_set_is_a_one_line_error(assignment, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(read_toml(embedded_config_path()), [assignment])


def test_cli_set_is_checked_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--set", "sae.k=0", "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("randsae: error: sae.k = 0 is invalid. "
                                               "Set sae.k to an integer of at least 1")
    assert not out.exists()


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("randsae 0.")
