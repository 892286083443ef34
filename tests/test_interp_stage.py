"""The interp stage end to end on a tiny synthetic run directory (no model, no tokenizer, no LLM).

`build_interp_run` (tests/helpers.py) writes the run-directory contract of docs/ARCHITECTURE.md: held-out
tokens, an activation cache per variant and a SAELens-format SAE per variant, with a `tokenlike` variant
whose latents follow tokens and a `noise` variant whose latents should score at chance.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from typing import Any

import pytest

from randsae.errors import UserError
from randsae.interp import InterpConfig, format_interp_table, interpret_run
from randsae.interp.ablation import ablation_rows, format_ablation_table
from randsae.interp.explainers import parse_token_list
from randsae.interp.language_models import BinaryAnswers, JudgeFailure
from randsae.interp.outputs import TASKS, read_explanation, read_scores
from randsae.interp.prompts import EXPLAINER_PROMPT_VERSION
from randsae.interp.stage import chosen_saes
from randsae.interp.summary import UNCALIBRATED_JUDGE, load_interp_summary
from randsae.run_dir import RunDir, SAEKey
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
    assert [sae.health.n_latents for sae in summary.saes] == [sae.n_sampled for sae in summary.saes]
    assert stored["saes"][0]["health"]["echo_share"] == 0.0, "the token-list explainer has no prompt to echo"
    echoing = dataclasses.replace(summary.saes[0].health, warnings=("only 20% of the explanations are distinct",))
    flagged = dataclasses.replace(summary, saes=(dataclasses.replace(summary.saes[0], health=echoing),))
    assert "warning: explanations of noise.layer1: only 20% of the explanations are distinct" in format_interp_table(
        flagged
    )


class ScriptedModel:
    """A fake LLM backend, one request at a time so the n-th call is known. The i-th explanation and judge
    call fail as `explain_faults[i]` / `judge_faults[i]` say ("request", "malformed", "parse", "interrupt"
    or None), later ones succeed; it remembers every prompt asked and the failed ones' kind and size."""

    concurrency = 1

    def __init__(self, explain_faults=(), judge_faults=()) -> None:
        self.explain_faults, self.judge_faults = list(explain_faults), list(judge_faults)
        self.explained: list[str] = []
        self.judged: list[str] = []
        self.failed: dict[str, tuple[str, int]] = {}

    def generate(self, prompt, max_tokens):
        self.explained.append(prompt.user)
        assert "<<" in prompt.user
        kind = self.explain_faults.pop(0) if self.explain_faults else None
        if kind == "parse":
            return "I cannot tell what these have in common."  # no 'Explanation:' line
        if kind:
            raise JudgeFailure(kind, "scripted")
        return "Thinking...\nExplanation: words with a w"

    def binary_answers(self, prompt, n):
        self.judged.append(prompt.user)
        kind = self.judge_faults.pop(0) if self.judge_faults else None
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind:
            self.failed[prompt.user] = (kind, n)
            raise JudgeFailure(kind, "scripted")
        return BinaryAnswers([True] * n, [0.7] * n, True)

    def failed_examples(self, kinds) -> int:
        return sum(n for kind, n in self.failed.values() if kind in kinds)


def _failures(sae, kind: str) -> int:
    return getattr(sae.fuzz, f"n_{kind}_failures") + getattr(sae.detection, f"n_{kind}_failures")


def test_failures_are_retried_by_kind_and_retry_failed_asks_every_one_again(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    cfg = small_config(judge="http", model="scripted", max_failure_fraction=1.0)
    paths = RunDir(run).interp("http-scripted")
    # Latent 1's explanation request fails (HTTP 500, say) and latent 2's reply has no explanation line;
    # six judge prompts fail, two of each kind.
    flaky = ScriptedModel(explain_faults=[None, "request", "parse"], judge_faults=["request", "malformed", "parse"] * 2)
    first = interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=flaky)
    sae = first.saes[0]
    latents = json.loads(paths.selection.read_text())["selections"]["tokenlike.layer1"]["latents"]
    sizes = {latent: len(read_scores(paths.score("fuzz", "tokenlike.layer1", latent))) for latent in latents}
    assert sae.n_explanation_failures == 2
    assert sae.n_explanation_request_failures == sae.n_explanation_parse_failures == 1
    for kind in ("request", "malformed", "parse"):
        assert _failures(sae, kind) == flaky.failed_examples({kind}) > 0
    assert sae.fuzz.n_unexplained_examples == sizes[latents[1]] + sizes[latents[2]]
    assert sae.fuzz.probability_source == "logprobs"
    table = format_interp_table(first)
    assert "failures by kind" in table and "--retry-failed" in table
    before = {t: [read_scores(paths.score(t, "tokenlike.layer1", latent)) for latent in latents] for t in TASKS}

    # A rerun asks again what the server spoiled (request, malformed), not what the model answered badly.
    steady = ScriptedModel()
    sae = interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=steady).saes[0]
    retryable = {prompt for prompt, (kind, _) in flaky.failed.items() if kind != "parse"}
    prompts_of_latent_1 = 2 * -(-sizes[latents[1]] // cfg.examples_per_prompt)
    assert len(steady.explained) == 1 and retryable <= set(steady.judged)
    assert len(steady.judged) == len(retryable) + prompts_of_latent_1
    assert _failures(sae, "request") == _failures(sae, "malformed") == 0
    assert _failures(sae, "parse") == flaky.failed_examples({"parse"})
    assert (sae.n_explanation_failures, sae.n_explanation_parse_failures) == (1, 1)
    for task in TASKS:  # what was answered is kept, not asked again
        for latent, old in zip(latents, before[task], strict=True):
            new = read_scores(paths.score(task, "tokenlike.layer1", latent))
            assert [r for r in old if r.failure is None] == [
                r for r, o in zip(new, old, strict=True) if o.failure is None
            ]

    # --retry-failed asks the rest, parse failures included; interrupted after the new explanation ...
    with pytest.raises(KeyboardInterrupt):
        interpret_run(
            run,
            cfg,
            progress=False,
            str_tokens=str_tokens,
            language_model=ScriptedModel(judge_faults=["interrupt"]),
            retry_failed=True,
        )
    # ... and resumed: latent 2's old "no explanation" scores are not taken for its new explanation's.
    again = ScriptedModel()
    summary = interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=again, retry_failed=True)
    assert again.explained == [] and {p for p, (k, _) in flaky.failed.items() if k == "parse"} <= set(again.judged)
    assert summary.saes[0].fuzz.n_failed == summary.saes[0].detection.n_failed == 0
    assert summary.saes[0].n_explanation_failures == 0

    done = ScriptedModel()
    interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=done, retry_failed=True)
    assert done.judged == done.explained == []


def test_too_many_failures_stop_the_run_with_a_clear_error(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    cfg = small_config(judge="http", model="scripted", max_failure_fraction=0.1)
    with pytest.raises(UserError, match="judge failed on"):
        interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=ScriptedModel(["request"] * 8))
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
    assert token.saes[0].explainer_prompt_version == "" and llm.saes[0].explainer_prompt_version == "2"
    assert load_interp_summary(RunDir(run).interp("http-scripted")).saes[0].explainer_prompt_version == "2"
    assert len(list((run / "interp" / "latent_cache").iterdir())) == 1  # one latent cache serves both judges


def test_changed_settings_do_not_mix_with_old_results(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    interpret_run(run, small_config(), progress=False, str_tokens=str_tokens)
    with pytest.raises(UserError, match="other interp settings or SAEs \\(n_negatives: 8 stored, 4 now\\)"):
        interpret_run(run, small_config(n_negatives=4), progress=False, str_tokens=str_tokens)


def test_explanations_from_another_explainer_prompt_are_not_mixed_in(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    cfg = small_config(judge="http", model="org/scripted")
    interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=ScriptedModel())
    selection = RunDir(run).interp("http-scripted").selection
    stored = json.loads(selection.read_text())
    assert stored["settings"]["explainer_prompt_version"] == EXPLAINER_PROMPT_VERSION
    stored["settings"]["explainer_prompt_version"] = "1"
    selection.write_text(json.dumps(stored))
    with pytest.raises(UserError, match="explainer_prompt_version: '1' stored, '2' now"):
        interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=ScriptedModel())


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
    assert not (run / "interp").exists()  # asked before any work: no latent cache built


@pytest.mark.parametrize(
    "settings, message",
    [
        (['interp.judge="http"', 'interp.base_url="http://127.0.0.1:9/v1"', "interp.retries=0"], "does not answer"),
        (['interp.judge="hf"'], "no local model at"),
    ],
)
def test_run_checks_an_llm_judge_before_the_harvest(tmp_path, capsys, settings, message):
    from randsae.cli import main

    overrides = [item for setting in [*settings, 'interp.model="/no/such/judge"'] for item in ("--set", setting)]
    assert main(["run", "--out", str(tmp_path / "run"), "--quiet", *overrides]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_interpret_retry_failed_on_the_command_line_reaches_the_stage(tmp_path, tiny_run, monkeypatch):
    import shutil

    import randsae.interp
    from randsae.cli import main

    run = shutil.copytree(tiny_run, tmp_path / "run")  # the command records its time in the run
    asked = []
    monkeypatch.setattr(randsae.interp, "interpret_run", lambda run, cfg, **kwargs: asked.append(kwargs))
    monkeypatch.setattr(randsae.interp, "format_interp_table", lambda summary, **flags: "")
    assert main(["interpret", str(run), "--retry-failed", "--quiet", "--device", "cpu"]) == 0
    assert main(["interpret", str(run), "--quiet", "--device", "cpu"]) == 0
    assert [kwargs["retry_failed"] for kwargs in asked] == [True, False]


class TokenReadingModel(ScriptedModel):
    """A judge that reads token-list explanations as the token judge does (an excerpt fires when it holds a
    listed token) and guesses on anything else; its explainer always says the same uninformative thing."""

    def binary_answers(self, prompt, n):
        self.judged.append(prompt.user)
        explanation, _, excerpts = prompt.user.partition("\n\n")
        listed = parse_token_list(explanation.removeprefix("Explanation: "))
        lines = [line.split(": ", 1)[1] for line in excerpts.splitlines() if line.startswith("Excerpt ")]
        if listed is None:
            return BinaryAnswers([False] * n, [0.5] * n, True)
        words = [set(line.replace("<<", " ").replace(">>", " ").split()) for line in lines]
        fires = [any(token.strip() in excerpt for token in listed) for excerpt in words]
        return BinaryAnswers(fires, [0.9 if f else 0.1 for f in fires], True)


def test_explainer_ablation_tells_a_failing_explainer_from_a_failing_judge(tmp_path, capsys):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    cfg = small_config(judge="http", model="scripted")
    model = TokenReadingModel()
    summary = interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=model)
    files = RunDir(run).interp("http-scripted")
    ablation = load_interp_summary(files.explainer_ablation)
    llm, lists = summary.saes[0], ablation.saes[0]
    assert lists.explainer == "token_list" and lists.judge == "http" and llm.explainer == "llm"
    assert llm.detection.auroc == 0.5 and lists.detection.auroc_low > 0.8  # the judge works, the explainer not
    assert [row.latent for row in ablation.latents] == [row.latent for row in summary.latents]
    rows = ablation_rows(summary, ablation)
    assert rows[0].detection_token_list == lists.detection.auroc
    assert rows[0].reading.startswith("token lists score higher") or "detection: token lists score higher" in (
        rows[0].reading
    )
    assert "explainer ablation" in format_ablation_table(rows)

    # A rerun asks the judge nothing: both sets of results are complete; without the ablation nothing is added.
    again = TokenReadingModel()
    interpret_run(run, cfg, progress=False, str_tokens=str_tokens, language_model=again)
    assert again.judged == [] and again.explained == []
    other = build_interp_run(tmp_path / "other", variants=("tokenlike",))
    interpret_run(
        other,
        small_config(judge="http", model="scripted", explainer_ablation=False),
        progress=False,
        str_tokens=str_tokens,
        language_model=TokenReadingModel(),
    )
    assert not RunDir(other).interp("http-scripted").explainer_ablation.root.exists()


def test_a_judge_that_failed_calibration_flags_every_auroc_of_the_table(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    summary = interpret_run(run, small_config(), progress=False, str_tokens=str_tokens)
    plain, flagged = format_interp_table(summary), format_interp_table(summary, judge_failed=True)
    assert "NOT MEANINGFUL" not in plain and "!" not in plain
    assert flagged.splitlines()[1] == UNCALIBRATED_JUDGE
    row = flagged.splitlines()[-3]
    assert row.startswith("tokenlike") and row.count("]!") == 2


def test_interp_layers_and_first_replicate_choose_the_saes():
    keys = [
        SAEKey("trained", 3, sae_seed=0),
        SAEKey("trained", 10, sae_seed=0),
        SAEKey("trained", 10, sae_seed=1),
        SAEKey("control", 10, variant_seed=0, sae_seed=0),
        SAEKey("control", 10, variant_seed=1, sae_seed=0),
    ]
    assert chosen_saes(keys, small_config()) == keys
    assert chosen_saes(keys, small_config(layers=(10,))) == keys[1:]
    assert chosen_saes(keys, small_config(layers=(10,), replicates="first")) == [keys[1], keys[3]]
    plain = [SAEKey("trained", 3), SAEKey("control", 3)]  # a run without replicates: every SAE is the first
    assert chosen_saes(plain, small_config(replicates="first")) == plain
    with pytest.raises(UserError, match=r"no SAE at interp.layers \[5\] \(its SAEs are at layers \[3, 10\]\)"):
        chosen_saes(keys, small_config(layers=(5,)))


def test_a_selection_stored_before_a_setting_existed_is_still_used(tmp_path):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    first = interpret_run(run, small_config(), progress=False, str_tokens=str_tokens)
    selection = RunDir(run).interp("token").selection
    stored = json.loads(selection.read_text())
    del stored["settings"]["layers"], stored["settings"]["replicates"]  # as written by an older randsae
    selection.write_text(json.dumps(stored))
    again = interpret_run(run, small_config(), progress=False, str_tokens=str_tokens)
    assert [row.latent for row in again.latents] == [row.latent for row in first.latents]
