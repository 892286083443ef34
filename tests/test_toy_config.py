"""Toy config: the shipped TOML files, and a clear UserError for every kind of bad input."""

from pathlib import Path

import numpy as np
import pytest

from randsae.errors import UserError
from randsae.toml_config import build_dataclass, dump_toml
from randsae.toy.config import ToyConfig, load_toy_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_file_spells_out_the_defaults():
    assert load_toy_config(CONFIGS / "toy-default.toml") == ToyConfig() == load_toy_config(None)


def test_paper_file_is_the_papers_sweep():
    paper = load_toy_config(CONFIGS / "toy-paper.toml")
    np.testing.assert_allclose(paper.l1_coefficients, np.logspace(-3, 2, 21))
    assert paper.latent_counts == (512, 1024, 2048, 4096)
    assert (paper.n_features, paper.n_dims, paper.mean_active, paper.frequency_decay) == (512, 256, 5.0, 0.99)
    assert (paper.learning_rate, paper.batch_size, paper.epochs, paper.networks) == (1e-3, 256, 100, ("mlp2",))
    assert len(paper.seeds) == 10


def test_toml_round_trip(tmp_path):
    config = ToyConfig(networks=("mlp2", "mlp4", "transformer_block"), seeds=(3, 4), mean_active=3, center_data=False)
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(config))
    assert load_toy_config(path) == config


def test_missing_keys_keep_defaults_and_ints_pass_as_floats(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("epochs = 3\nmean_active = 4\n")
    config = load_toy_config(path)
    assert config.epochs == 3 and config.mean_active == 4.0 and isinstance(config.mean_active, float)
    assert config.n_features == ToyConfig().n_features


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("epoch = 3\n")
    with pytest.raises(UserError) as error:
        load_toy_config(path)
    assert "'epoch'" in error.value.problem and "epochs" in error.value.fix and "latent_counts" in error.value.fix


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"epochs": "ten"}, "epochs"),
        ({"epochs": 0}, "epochs"),
        ({"latent_counts": 512}, "latent_counts"),
        ({"latent_counts": [512, 512]}, "latent_counts"),
        ({"latent_counts": []}, "latent_counts"),
        ({"seeds": [0.5]}, "seeds"),
        ({"networks": ["mlp1"]}, "networks"),
        ({"networks": ["resnet"]}, "networks"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"mean_active": 0}, "mean_active"),
        ({"l1_log10_min": 3.0}, "l1_log10_min"),
        ({"n_samples": 100}, "n_samples"),
        ({"device": "tpu"}, "device"),
        ({"epochs": True}, "epochs"),
        ({"center_data": 1}, "center_data"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_values_are_user_errors_naming_the_key(raw, key):
    with pytest.raises(UserError, match=key) as error:
        build_dataclass(ToyConfig, raw)
    assert key in error.value.problem and error.value.fix


def test_missing_file_directory_and_bad_syntax_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_toy_config(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="is a directory"):
        load_toy_config(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text("epochs = = 3\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_toy_config(path)
