"""The interp stage end to end on a tiny synthetic run directory (no model, no tokenizer, no LLM).

`build_interp_run` (tests/helpers.py) writes the run-directory contract of docs/ARCHITECTURE.md: held-out
tokens, an activation cache per variant and a SAELens-format SAE per variant, with a `tokenlike` variant
whose latents follow tokens and a `noise` variant whose latents should score at chance.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import pytest

from randsae.errors import UserError
from randsae.interp import InterpConfig, format_interp_table, interpret_run
from randsae.interp.language_models import BinaryAnswers, JudgeFailure
from randsae.interp.outputs import read_explanation, read_scores
from randsae.run_dir import RunDir
from tests.helpers import build_interp_run, str_tokens


def small_config(**overrides) -> InterpConfig:
    settings: dict[str, Any] = dict(
        n_latents=8,
        min_examples=10,
        window_size=16,
        n_top_windows=200,
        n_explanation_windows=6,
        n_quantiles=3,
        n_per_quantile=3,
        n_negatives=8,
        n_list_tokens=3,
        n_bootstrap=200,
        verify_rows=64,
    )
    settings.update(overrides)
    return InterpConfig(**settings)


def test_token_judge_run_writes_every_output_and_separates_token_latents_from_noise(tmp_path):
    run = build_interp_run(tmp_path / "run")
    summary = interpret_run(run, small_config(), progress=False, str_tokens=str_tokens)
    paths = RunDir(run).interp("token")

    by_variant = {sae.variant: sae for sae in summary.saes}
    assert set(by_variant) == {"noise", "tokenlike"}
    for sae in summary.saes:
        assert sae.n_sampled == 8 and sae.n_requested == 8 and sae.n_eligible >= 8
        assert sae.fuzz.probability_source == "token_membership"
        assert sae.fuzz.n_failed == 0 and sae.fuzz.n_examples == sae.fuzz.n_positives + sae.fuzz.n_negatives
        assert sae.fuzz.auroc_low <= sae.fuzz.auroc <= sae.fuzz.auroc_high
    assert by_variant["tokenlike"].detection.auroc > 0.9
    assert by_variant["tokenlike"].fuzz.auroc > by_variant["noise"].fuzz.auroc + 0.2
    assert by_variant["tokenlike"].token_entropy.mean < by_variant["noise"].token_entropy.mean

    selection = json.loads(paths.selection.read_text())["selections"]
    for module, entry in selection.items():
        for latent in entry["latents"]:
            explanation = read_explanation(paths.explanation(module, latent))
            assert explanation.startswith("fires on tokens:")
            for task in ("fuzz", "detection"):
                records = read_scores(paths.score(task, module, latent))
                assert records and all(r.correct == (r.prediction == r.activating) for r in records)
                assert all(len(r.str_tokens) == 16 == len(r.activations) for r in records)

    with open(paths.table) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    for column in (
        "variant",
        "layer",
        "latent",
        "n_activations",
        "explanation",
        "fuzz_auroc",
        "detection_auroc",
        "token_entropy",
        "explanation_top_token",
        "explanation_top_token_share",
    ):
        assert column in rows[0]
    stored = json.loads(paths.summary.read_text())
    assert [s["module"] for s in stored["saes"]] == ["noise.layer1", "tokenlike.layer1"]
    table = format_interp_table(summary)
    assert "tokenlike" in table and "scaled down" in table


class ScriptedModel:
    """A fake LLM backend: explanations always parse; the first `fail_first` judge calls time out."""

    concurrency = 4

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.judge_calls = 0
        self.explain_calls = 0

    def generate(self, prompt, max_tokens):
        self.explain_calls += 1
        assert "<<" in prompt.user
        return "Thinking...\nExplanation: words with a w"

    def binary_answers(self, prompt, n):
        self.judge_calls += 1
        if self.judge_calls <= self.fail_first:
            raise JudgeFailure("request", "timed out")
        return BinaryAnswers([True] * n, [0.7] * n, True)


def test_request_failures_are_counted_then_retried_on_resume_and_nothing_else_is(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    cfg = small_config(judge="http", model="scripted", max_failure_fraction=1.0)
    flaky = ScriptedModel(fail_first=3)
    first = interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=flaky)
    sae = first.saes[0]
    assert sae.fuzz.n_request_failures + sae.detection.n_request_failures == 3 * cfg.examples_per_prompt
    assert sae.fuzz.probability_source == "logprobs"

    steady = ScriptedModel()
    second = interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=steady)
    assert steady.explain_calls == 0
    assert 0 < steady.judge_calls < flaky.judge_calls  # only latents with a failed request are judged again
    assert second.saes[0].fuzz.n_failed == second.saes[0].detection.n_failed == 0

    third = ScriptedModel()
    interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=third)
    assert third.judge_calls == third.explain_calls == 0


def test_too_many_failures_stop_the_run_with_a_clear_error(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    cfg = small_config(judge="http", model="scripted", max_failure_fraction=0.1)
    with pytest.raises(UserError, match="judge failed on"):
        interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=ScriptedModel(10**6))
    assert (run / "interp" / "http-scripted" / "interp.json").is_file()  # the results are still written


def test_a_cache_that_disagrees_with_encode_stops_the_run(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",), architecture="interp_test_broken_topk")
    with pytest.raises(UserError, match="disagrees with the SAE's encode"):
        interpret_run(run, small_config(), progress=False, str_tokens=str_tokens)
    assert not list((run / "interp" / "token").glob("scores/*/*"))


def test_a_second_judge_sits_beside_the_first(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    token = interpret_run(run, small_config(), progress=False, str_tokens=str_tokens)
    llm = interpret_run(
        run,
        small_config(judge="http", model="org/scripted"),
        progress=False,
        str_tokens=str_tokens,
        language_model=ScriptedModel(),
    )
    assert RunDir(run).interp_judges() == ["http-scripted", "token"]
    assert token.saes[0].judge == "token" and llm.saes[0].judge == "http"
    assert len(list((run / "interp" / "latent_cache").iterdir())) == 1  # one latent cache serves both judges


def test_changed_settings_do_not_mix_with_old_results(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    interpret_run(run, small_config(), progress=False, str_tokens=str_tokens)
    with pytest.raises(UserError, match="other interp settings"):
        interpret_run(run, small_config(n_negatives=4), progress=False, str_tokens=str_tokens)


def test_selection_is_matched_across_variants_and_the_reduction_reported(tmp_path):
    run = build_interp_run(tmp_path / "run")
    summary = interpret_run(run, small_config(n_latents=1000), progress=False, str_tokens=str_tokens)
    sampled = {sae.n_sampled for sae in summary.saes}
    assert len(sampled) == 1
    assert sampled.pop() == min(sae.n_eligible for sae in summary.saes)
    assert all(sae.n_requested == 1000 for sae in summary.saes)


def test_an_unreachable_judge_server_is_one_clear_error(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    cfg = small_config(judge="http", model="m", base_url="http://127.0.0.1:9/v1", retries=0, timeout_s=2)
    with pytest.raises(UserError, match="does not answer"):
        interpret_run(run, cfg, progress=False, str_tokens=str_tokens)
