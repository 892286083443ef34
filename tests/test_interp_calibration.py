"""Judge calibration on probe latents: a judge that reads the explanation passes, one that answers at random
or always says 1 fails; the verdict is stored and said in one line."""

from __future__ import annotations

import hashlib
import random
import re
import shutil

import numpy as np
import pytest

from randsae.interp import interpret_run
from randsae.interp.calibration import (
    MIN_SENSITIVITY,
    PROBES,
    calibrate_judge,
    load_calibration,
    probe_entries,
    save_calibration,
)
from randsae.interp.judges import JudgeRequest, Verdict
from randsae.interp.summary import load_interp_summary
from randsae.run_dir import InterpDir, RunDir
from tests.helpers import build_interp_run, tiny_interp_config
from tests.helpers import str_tokens as interp_str_tokens
from tests.test_interp_faults import JudgeServer, http_config
from tests.test_interp_faults import serve as serve  # a fixture: pytest finds it by name in this module

VOCAB = ["<bos>", " of", " the", " cat", " sat", " on", " mat", "12", "7", ".", " Dogs", " run", " fast", " and"]
CONTEXT, N_WINDOWS = 32, 96
CFG = tiny_interp_config(min_examples=6, n_quantiles=2, n_per_quantile=4, n_negatives=8, n_bootstrap=50)


def str_tokens(ids) -> list[str]:
    return [VOCAB[i] for i in ids]


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """(flattened token ids, counted rows): random words, position 0 BOS."""
    ids = np.random.default_rng(0).integers(1, len(VOCAB), size=(N_WINDOWS, CONTEXT))
    ids[:, 0] = 0
    counted = np.ones(ids.shape, bool)
    counted[:, 0] = False
    return ids.reshape(-1), counted.reshape(-1)


class PerfectJudge:
    """Says 1 exactly where the explained probe fires (detection: anywhere; fuzzing: on every marked token)."""

    def judge_many(self, requests: list[JudgeRequest], progress: bool = False) -> list[list[Verdict]]:
        rule = {probe.explanation: probe.fires for probe in PROBES}
        out = []
        for request in requests:
            verdicts = []
            for item in request.items:
                fires = rule[request.explanation](item.str_tokens)
                if request.task == "detection":
                    answer = bool(fires.any())
                else:
                    answer = item.marked is not None and bool(item.marked.any()) and bool(fires[item.marked].all())
                verdicts.append(Verdict(answer, float(answer), None, "test"))
            out.append(verdicts)
        return out


class ConstantJudge:
    def __init__(self, answer: bool | None) -> None:
        self.answer, self.rng = answer, np.random.default_rng(1)

    def judge_many(self, requests: list[JudgeRequest], progress: bool = False) -> list[list[Verdict]]:
        out = []
        for request in requests:
            if self.answer is None:  # at random
                probabilities = self.rng.random(len(request.items))
                out.append([Verdict(bool(p > 0.5), float(p), None, "test") for p in probabilities])
            else:
                out.append([Verdict(self.answer, float(self.answer), None, "test")] * len(request.items))
        return out


def test_every_probe_is_found_where_its_rule_holds():
    tokens, counted = held_out()
    entries = probe_entries(tokens, counted, str_tokens, CONTEXT, CFG)
    assert [probe.name for probe in entries] == ["of", "digits", "sentence_start"]
    texts = str_tokens(tokens)
    of, digits, start = entries.values()
    assert {texts[row] for row in of.rows} == {" of"} and {texts[row] for row in digits.rows} == {"12", "7"}
    assert all(texts[row - 1] == "." and texts[row].strip().isalpha() for row in start.rows)
    assert np.isin(np.flatnonzero(np.array(texts) == " of"), of.rows).all() and (of.values == 1).all()


def test_a_judge_that_reads_the_explanation_passes(tmp_path):
    tokens, counted = held_out()
    calibration = calibrate_judge(PerfectJudge(), CFG, tokens, counted, CONTEXT, str_tokens)
    assert calibration is not None and not calibration.fails
    for task in calibration.tasks:
        assert task.sensitivity > 0.9, task
        assert 0.25 < task.specificity < 0.75, task  # another probe's explanation says nothing of these
    paths = InterpDir(tmp_path / "interp" / "http-judge")
    save_calibration(paths, calibration)
    assert load_calibration(paths) == calibration
    assert calibration.describe().startswith("judge calibration on 3 probe latents") and "WARNING" not in (
        calibration.describe()
    )


@pytest.mark.parametrize("answer", [True, None], ids=["always 1", "at random"])
def test_a_judge_that_ignores_the_explanation_fails(answer):
    tokens, counted = held_out()
    calibration = calibrate_judge(ConstantJudge(answer), CFG, tokens, counted, CONTEXT, str_tokens)
    assert calibration is not None and calibration.fails
    assert all(task.sensitivity < MIN_SENSITIVITY for task in calibration.tasks)
    if answer:
        assert all(task.sensitivity == 0.5 for task in calibration.tasks)  # all ties
    assert "WARNING: the judge fails calibration" in calibration.describe()


def test_too_few_probes_skip_calibration():
    tokens = np.zeros(N_WINDOWS * CONTEXT, np.int64) + 3  # " cat" everywhere: no probe fires
    assert calibrate_judge(PerfectJudge(), CFG, tokens, np.ones(tokens.size, bool), CONTEXT, str_tokens) is None


def test_the_report_says_first_that_the_judge_failed(tmp_path):
    from randsae.interp.calibration import JudgeCalibration, TaskCalibration
    from randsae.report import write_report
    from randsae.run_dir import RunDir
    from tests.helpers import build_report_run

    run = RunDir(build_report_run(tmp_path, variants=("trained", "control"), layers=(1,)))
    failing = JudgeCalibration(
        ("of", "digits"), (TaskCalibration("fuzz", 0.52, 0.5), TaskCalibration("detection", 0.9, 0.5))
    )
    files = run.interp(run.interp_judges()[0])
    save_calibration(files, failing)
    # The same judge's token-list scores (the explainer ablation): here a copy of its own results.
    files.explainer_ablation.root.mkdir()
    for path in (files.summary, files.table):
        shutil.copy(path, files.explainer_ablation.root / path.name)
    report = write_report(run.root, progress=False).read_text()
    warning = report.index("WARNING: the judge fails calibration")
    assert warning < report.index('id="tables"') and "fuzz 0.52 / 0.50; detection 0.90 / 0.50" in report
    interp_table = report[report.index('id="interp"') : report.index("</table>", report.index('id="interp"'))]
    n_saes = len(load_interp_summary(files).saes)
    assert interp_table.count("not meaningful: the judge failed calibration") == 9 * n_saes  # every judged score
    assert "NOT MEANINGFUL: the judge failed its calibration" in report
    assert 'id="explainer-ablation"' in report and "no clear difference" in report  # equal results


class ProbeServer(JudgeServer):
    """An OpenAI-compatible server whose judge follows `behaviour`: "perfect" applies the rule of the probe
    the explanation names (detection: anywhere in the excerpt; fuzzing: every marked token), "always_1" says
    1 to everything, "random" flips a coin seeded by the prompt (so the answers do not depend on the order
    in which concurrent requests arrive). Its explainer always answers the same phrase."""

    def __init__(self, behaviour: str) -> None:
        super().__init__()
        self.behaviour = behaviour

    def answer(self, kind: str, key: str, user: str) -> dict:
        if kind != "judge":
            return super().answer(kind, key, user)
        explanation = user.split("\n", 1)[0].removeprefix("Explanation: ")
        excerpts = [line.split(": ", 1)[1] for line in user.splitlines() if line.startswith("Excerpt ")]
        rule = {probe.explanation: probe.fires for probe in PROBES}.get(explanation)
        answers = []
        coin = random.Random(hashlib.sha256(user.encode()).digest())
        for excerpt in excerpts:
            if self.behaviour == "always_1":
                answers.append(1)
            elif self.behaviour == "random" or rule is None:
                answers.append(coin.randint(0, 1))
            else:
                marked = re.findall(r"<<(.*?)>>", excerpt)
                pieces = marked if marked else excerpt.replace("<<", "").replace(">>", "").split(" ")
                fires = rule([" " + piece.strip() for piece in pieces if piece.strip()])
                answers.append(int(fires.all() if marked else fires.any()))
        return {"choices": [{"message": {"role": "assistant", "content": str(answers)}}]}


def with_probe_tokens(ids):
    """The synthetic run's tokens with two renamed so that the probes " of" and digits fire."""
    return [{1: " of", 2: " 42"}.get(i, text) for i, text in zip(ids, interp_str_tokens(ids), strict=True)]


@pytest.mark.parametrize(("behaviour", "passes"), [("perfect", True), ("always_1", False), ("random", False)])
def test_calibration_and_health_through_a_scripted_server(tmp_path, serve, behaviour, passes):
    run = build_interp_run(tmp_path / "run", variants=("tokenlike",))
    server = serve(ProbeServer(behaviour))
    summary = interpret_run(run, http_config(server.url), progress=False, str_tokens=with_probe_tokens)
    calibration = load_calibration(RunDir(run).interp("http-judge"))
    assert calibration is not None and calibration.probes == ("of", "digits")
    assert calibration.fails is not passes
    for task in calibration.tasks:
        if behaviour == "perfect":
            assert task.sensitivity > 0.9 and 0.25 < task.specificity < 0.75, task
        elif behaviour == "always_1":
            assert task.sensitivity == task.specificity == 0.5
        else:
            assert abs(task.sensitivity - 0.5) < MIN_SENSITIVITY - 0.5
    # The server's explainer says "words with a w" for every latent: one distinct explanation of 8, warned.
    health = summary.saes[0].health
    assert health is not None and health.distinct_share == 1 / 8
    assert any("distinct" in warning for warning in health.warnings)
