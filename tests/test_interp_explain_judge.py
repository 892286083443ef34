"""Explainers, prompts, answer parsing, the token judge and the LLM judge (with a scripted backend)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from randsae.interp.examples import WindowSet
from randsae.interp.explainers import (
    LLMExplainer,
    TokenListExplainer,
    activation_levels,
    format_token_list,
    highlight_mask,
    parse_explanation,
    parse_token_list,
)
from randsae.interp.judges import JudgeItem, JudgeRequest, LLMJudge, TokenJudge
from randsae.interp.language_models import BinaryAnswers, JudgeFailure, TokenChoice, answers_from_tokens
from randsae.interp.prompts import (
    EXPLAINER_EXAMPLES,
    EXPLAINER_SYSTEM,
    GENERIC_WORDS,
    judge_prompt,
    prompt_vocabulary,
    render_window,
)

VOCAB = [" the", " cat", " sat", ",", ' "quoted"', " on", " mat", "."]


def str_tokens(ids):
    return [VOCAB[i] for i in ids]


def windows(token_ids, activations) -> WindowSet:
    token_ids, activations = np.asarray(token_ids), np.asarray(activations, np.float32)
    return WindowSet(np.arange(len(token_ids)), token_ids, activations, np.zeros(len(token_ids), np.int64))


def test_highlights_levels_and_rendering():
    activations = np.array([[0.0, 1.0, 0.29, 0.31, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert highlight_mask(activations, 0.3).tolist() == [[False, True, False, True, False], [False] * 5]
    assert activation_levels(np.array([[0.0, 2.0, 1.0, 0.04]])).tolist() == [[0, 10, 5, 0]]
    marked = np.array([False, True, True, False, True])
    assert render_window([" a", " b", " c", " d", " e"], marked) == " a<< b c>> d<< e>>"
    assert render_window([" a", " b"], None) == " a b"


def test_token_list_round_trip_keeps_awkward_tokens():
    tokens = [" the", ",", ' "quoted"', "a, b"]
    assert parse_token_list(format_token_list(tokens)) == tokens
    assert parse_token_list("colour words") is None
    assert parse_token_list("fires on tokens: not json") is None


def test_token_list_explainer_orders_tokens_by_activation_mass():
    explainer = TokenListExplainer(n_tokens=2)
    found = explainer.explain_many([windows([[1, 2, 1, 6]], [[1.0, 3.0, 1.5, 0.5]])], str_tokens)[0]
    assert found.failure is None
    assert parse_token_list(found.text) == [" sat", " cat"]  # 3.0, then 1.0 + 1.5
    empty = explainer.explain_many([windows([[1, 2]], [[0.0, 0.0]])], str_tokens)[0]
    assert empty.failure == "parse" and empty.text == ""


def test_parse_explanation_takes_the_last_marked_line():
    assert parse_explanation("I think...\nExplanation: cats\nexplanation:  animals that sit. ") == "animals that sit."
    assert parse_explanation("no marker here") is None
    assert parse_explanation('Explanation: "quoted words"') == "quoted words"


def test_answers_from_logprobs_use_both_digits():
    tokens = [
        TokenChoice("[", {"[": -0.01}),
        TokenChoice("1", {"1": math.log(0.6), "0": math.log(0.3)}),
        TokenChoice(",", {",": 0.0}),
        TokenChoice(" 0", {" 0": math.log(0.8), " 1": math.log(0.1), "0": math.log(0.05)}),
        TokenChoice("]", {"]": 0.0}),
    ]
    answers = answers_from_tokens(tokens, "[1, 0]", 2)
    assert answers.predictions == [True, False] and answers.from_logprobs
    assert answers.probabilities == pytest.approx([0.6 / 0.9, 0.1 / 0.95])


def test_answers_without_logprobs_are_hard_and_garbage_is_a_parse_failure():
    answers = answers_from_tokens(None, "[1, 0, 1]", 3)
    assert answers == BinaryAnswers([True, False, True], [1.0, 0.0, 1.0], False)
    with pytest.raises(JudgeFailure) as caught:
        answers_from_tokens(None, "I cannot tell", 3)
    assert caught.value.kind == "parse"
    with pytest.raises(JudgeFailure):
        answers_from_tokens([TokenChoice("1", {"1": 0.0})], "1", 2)


def test_token_judge_detection_and_fuzzing():
    explanation = format_token_list([" cat", " mat"])
    judge = TokenJudge()
    detection = JudgeRequest(
        "detection",
        explanation,
        [JudgeItem([" the", " mat"], None), JudgeItem([" the", " cat"], None), JudgeItem([" the", " on"], None)],
    )
    verdicts = judge.judge_many([detection])[0]
    assert [v.probability for v in verdicts] == [0.5, 1.0, 0.0]
    assert [v.prediction for v in verdicts] == [True, True, False]
    fuzz = JudgeRequest(
        "fuzz",
        explanation,
        [
            JudgeItem([" cat", " the", " mat"], np.array([1, 0, 1], bool)),
            JudgeItem([" cat", " the"], np.array([1, 1], bool)),
            JudgeItem([" cat", " the"], np.array([0, 1], bool)),
        ],
    )
    verdicts = judge.judge_many([fuzz])[0]
    assert [v.probability for v in verdicts] == [1.0, 0.5, 0.0]
    assert [v.prediction for v in verdicts] == [True, True, False]
    unparsable = judge.judge_many([JudgeRequest("fuzz", "cats", fuzz.items)])[0]
    assert all(v.failure == "parse" and v.probability is None for v in unparsable)


class EchoModel:
    """Records prompts; answers 1 for excerpts containing 'cat', fails on prompts mentioning 'mat'."""

    concurrency = 3

    def __init__(self):
        self.prompts = []

    def generate(self, prompt, max_tokens):
        self.prompts.append(prompt)
        return "The marked words are animals.\nExplanation: animals"

    def binary_answers(self, prompt, n):
        self.prompts.append(prompt)
        excerpts = [line for line in prompt.user.splitlines() if line.startswith("Excerpt")]
        assert len(excerpts) == n
        if any("mat" in line for line in excerpts):
            raise JudgeFailure("request", "timed out")
        answers = ["cat" in line for line in excerpts]
        return BinaryAnswers(answers, [0.9 if a else 0.2 for a in answers], True)


def test_llm_explainer_shows_highlights_and_activations():
    model = EchoModel()
    found = LLMExplainer(model, 0.3, 50).explain_many([windows([[0, 1, 2]], [[0.0, 2.0, 0.2]])], str_tokens)[0]
    assert found.text == "animals" and found.failure is None
    user = model.prompts[0].user
    assert "Excerpt 1:  the<< cat>> sat" in user and "' cat' 10" in user and "sat' " not in user


def test_explainer_prompt_names_no_category_a_small_model_could_echo():
    words = set(re.findall(r"[a-z]+", EXPLAINER_SYSTEM.lower()))
    assert not words & GENERIC_WORDS
    assert len(EXPLAINER_EXAMPLES) >= 2
    for excerpts, answer in EXPLAINER_EXAMPLES:
        assert f"Explanation: {answer}" in EXPLAINER_SYSTEM
        for text, activations in excerpts:
            # The marked spans are what `render_window` would draw for the listed tokens: runs share a marker.
            assert "".join(re.findall(r"<<(.*?)>>", text)) == "".join(token for token, _ in activations)
            assert ">><<" not in text and all(0 <= value <= 10 for _, value in activations)


def test_prompt_vocabulary_is_the_prompts_own_content_words():
    vocabulary = prompt_vocabulary()
    assert {"pattern", "specific", "marked", "quantity", "date"} <= vocabulary
    assert not {"the", "of", "a", "and"} & vocabulary
    assert vocabulary <= set(re.findall(r"[a-z]+", EXPLAINER_SYSTEM.lower()))
    assert all(word == word.lower() for word in vocabulary)


def test_llm_judge_marks_failed_requests_and_keeps_order():
    model = EchoModel()
    requests = [
        JudgeRequest("detection", "animals", [JudgeItem([" the", " cat"], None), JudgeItem([" on"], None)]),
        JudgeRequest("fuzz", "animals", [JudgeItem([" the", " mat"], np.array([0, 1], bool))]),
    ]
    first, second = LLMJudge(model).judge_many(requests)
    assert [v.prediction for v in first] == [True, False] and first[0].source == "logprobs"
    assert second[0].failure == "request" and second[0].prediction is None
    fuzz_prompt = next(p for p in model.prompts if "marked" in p.system)
    assert "<< mat>>" in fuzz_prompt.user


def test_judge_prompt_numbers_every_excerpt():
    prompt = judge_prompt("detection", "animals", ["a cat", "a dog"])
    assert "Excerpt 1: a cat\nExcerpt 2: a dog" in prompt.user and "2 numbers" in prompt.user
    assert prompt.as_text().endswith("Answer: [")
