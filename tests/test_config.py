"""The experiment config: paper defaults, the embedded default as overrides, load-time checks, --set, the
generated key reference."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

import randsae
from randsae.cli import main
from randsae.config import ExperimentConfig, SAEShape, embedded_config_path, load_config
from randsae.config_docs import EXAMPLE_MISTAKES, field_docs
from randsae.errors import UserError
from randsae.model_sweep import Sweep, load_experiment
from randsae.sae_sweep import ShapeSweep
from randsae.toml_config import apply_overrides, read_toml

ROOT = Path(__file__).parent.parent


def test_defaults_are_the_papers_experiment():
    cfg = ExperimentConfig()
    assert cfg.model.name == "EleutherAI/pythia-70m" and cfg.layers == (0, 1, 2, 3, 4, 5)
    assert cfg.variants == ("trained", "step0", "rerandomized", "rerandomized_keep_embeddings", "control")
    assert (cfg.tokens.context_size, cfg.tokens.train_tokens, cfg.tokens.heldout_tokens) == (2048, 10**8, 10**7)
    assert (cfg.sae.architecture, cfg.sae.expansion, cfg.sae.k) == ("topk", 64, 32)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps, cfg.train.auxk_coefficient) == (
        8192,
        None,
        1000,
        0.0,
    )
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


@pytest.mark.parametrize("mistake", EXAMPLE_MISTAKES, ids=" ".join)
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
    raw = apply_overrides(
        {"sae": {"expansion": 8}},
        [
            "sae.k=16",
            "layers=[1, 2]",
            "model.name=EleutherAI/pythia-160m",
            "device=cuda:1",
            'data.source="a b"',
            "train.lr=1e-3",
            "analysis.seed_stability=true",
            "interp.model=",
        ],
    )
    assert raw == {
        "sae": {"expansion": 8, "k": 16},
        "layers": [1, 2],
        "model": {"name": "EleutherAI/pythia-160m"},
        "device": "cuda:1",
        "data": {"source": "a b"},
        "train": {"lr": 1e-3},
        "analysis": {"seed_stability": True},
        "interp": {"model": ""},
    }
    cfg = load_config(None, ["sae.k=16", "layers=[1,2]"])
    assert (cfg.sae.k, cfg.layers) == (16, (1, 2))
    assert dataclasses.replace(cfg, sae=load_config().sae, layers=load_config().layers) == load_config()


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("sae.k", "is not key=value"),
        ("=3", "is not key=value"),
        ("sae..k=1", "is not key=value"),
        ("sae k=1", "is not key=value"),
        ("layers=[1, 2", "is not a TOML value"),
        ('model.name="x', "is not a TOML value"),
        ("layers.x=1", "layers is not a table"),
        ("sae.k=1\nlayers=[]", "is not a TOML value"),
    ],
)
def test_a_malformed_set_is_a_one_line_error(assignment, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(read_toml(embedded_config_path()), [assignment])


def test_cli_set_is_checked_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--set", "sae.k=0", "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "randsae: error: sae.k = 0 is invalid. Set sae.k to an integer of at least 1"
    )
    assert not out.exists()


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("randsae 0.")


def _classes(cfg) -> list[type]:
    """The config's class and those of its tables."""
    return [
        type(cfg),
        *(
            type(getattr(cfg, field.name))
            for field in dataclasses.fields(cfg)
            if dataclasses.is_dataclass(getattr(cfg, field.name))
        ),
    ]


def test_every_config_key_has_a_docstring():
    for cls in _classes(ExperimentConfig()):
        missing = [field.name for field in dataclasses.fields(cls) if not field_docs(cls).get(field.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_docs_config_md_is_the_generators_output():
    """Run as a user runs it: in this process other tests register SAE architectures of their own."""
    package_root = Path(randsae.__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "randsae.config_docs"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(package_root)},
        check=True,
    )
    assert (ROOT / "docs" / "config.md").read_text() == done.stdout, (
        "regenerate it: PYTHONPATH=src python -m randsae.config_docs > docs/config.md"
    )


@pytest.mark.parametrize(
    "settings, problem, fix",
    [
        ({"architecture": "matching_pursuit"}, "sae.architecture = 'matching_pursuit'", "one of batchtopk, gated"),
        (
            {"l1_coefficient": 0.1},
            "sae.l1_coefficient is set, but sae.architecture = 'topk'",
            "Remove sae.l1_coefficient",
        ),
        ({"architecture": "jumprelu", "k": 16}, "sae.k is set, but sae.architecture = 'jumprelu'", "Remove sae.k"),
        ({"architecture": "gated", "l0_coefficient": 1.0}, "sae.l0_coefficient is set", "gated takes l1_coefficient"),
        (
            {"architecture": "matryoshka_batchtopk", "expansion": 8, "matryoshka_groups": (1, 3)},
            "sae.matryoshka_groups = [1, 3]",
            "adding up to sae.expansion = 8, not 4",
        ),
        ({"architecture": "jumprelu", "jumprelu_bandwidth": 0.0}, "sae.jumprelu_bandwidth = 0.0", "a positive number"),
    ],
)
def test_sae_settings_the_architecture_does_not_take_are_refused(settings, problem, fix):
    with pytest.raises(UserError) as error:
        SAEShape(**settings)
    assert problem in error.value.problem and fix in error.value.fix


@pytest.mark.parametrize(
    "expansion, groups",
    [(1, (1,)), (2, (1, 1)), (6, (1, 1, 2, 2)), (16, (1, 1, 2, 4, 8)), (64, (1, 1, 2, 4, 8, 16, 32))],
)
def test_unset_matryoshka_groups_double_their_prefixes_up_to_the_expansion(expansion, groups):
    assert SAEShape(architecture="matryoshka_batchtopk", expansion=expansion).matryoshka_groups == groups


def test_sae_config_fills_each_architectures_defaults_and_refuses_k_of_d_sae():
    assert SAEShape().sae_config(16).k == 32
    jumprelu = SAEShape(architecture="jumprelu").sae_config(16)
    assert (jumprelu.k, jumprelu.l0_coefficient, jumprelu.jumprelu_bandwidth) == (None, 1e-3, 0.05)
    matryoshka = SAEShape(architecture="matryoshka_batchtopk", expansion=8, matryoshka_groups=(1, 3, 4), k=4)
    assert matryoshka.sae_config(16).matryoshka_widths == (16, 64, 128)
    with pytest.raises(UserError, match="fewer than the d_sae = 64"):
        SAEShape(expansion=4, k=64).sae_config(16)
    assert SAEShape(expansion=4, k=63).sae_config(16).k == 63


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "configs").glob("*.toml") if not p.name.startswith("toy-")), ids=str
)
def test_every_shipped_experiment_config_loads(path):
    """configs/*.toml (the toy models' aside, read by their own loader) are whole, checked experiments."""
    assert isinstance(load_experiment(path), (ExperimentConfig, Sweep, ShapeSweep))
