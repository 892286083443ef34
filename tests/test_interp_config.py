"""InterpConfig: paper defaults, the embedded default's scaling and what it prints, clear errors on bad settings."""

from __future__ import annotations

import pytest

from randsae.config import load_config
from randsae.errors import UserError
from randsae.interp.config import InterpConfig, describe_scaling


def test_defaults_are_the_papers_protocol():
    cfg = InterpConfig()
    assert (cfg.n_latents, cfg.min_examples, cfg.window_size, cfg.n_top_windows) == (100, 200, 32, 10_000)
    assert (cfg.n_explanation_windows, cfg.n_quantiles, cfg.n_per_quantile, cfg.n_negatives) == (40, 10, 10, 100)
    assert (cfg.highlight_threshold, cfg.examples_per_prompt) == (0.3, 5)
    assert describe_scaling(cfg).startswith("interp: the paper's protocol numbers; judge: token")


def test_embedded_scaling_names_every_changed_number():
    line = describe_scaling(load_config().interp)
    assert line.startswith("interp scaled down from the paper:")
    for change in ("n_latents 100 -> 32", "min_examples 200 -> 24", "n_negatives 100 -> 16"):
        assert change in line
    assert "window_size" not in line and "explainer: token_list" in line


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(n_latents=0), "n_latents must be at least 1"),
        (dict(judge="gpt"), "unknown interp.judge"),
        (dict(judge="http"), "needs interp.model"),
        (dict(explainer="llm"), "token judge scores token-list explanations only"),
        (dict(highlight_threshold=1.5), "highlight_threshold"),
        (dict(timeout_s=0), "timeout_s"),
        (dict(judge="http", model="m", base_url="localhost:8000"), "interp.base_url"),
    ],
)
def test_bad_settings_are_user_errors(settings, message):
    with pytest.raises(UserError, match=message):
        InterpConfig(**settings)


def test_auto_explainer_follows_the_judge():
    assert InterpConfig().resolved_explainer == "token_list"
    assert InterpConfig(judge="http", model="m").resolved_explainer == "llm"
