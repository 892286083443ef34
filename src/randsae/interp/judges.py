"""Judges: given an explanation and a few windows, say for each whether the latent fires (a 0/1 answer
with a probability). One interface, two kinds: an LLM judge over any `LanguageModel` backend, and the
LLM-free token judge that checks a token-list explanation by token membership.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from randsae.interp import prompts
from randsae.interp.explainers import parse_token_list
from randsae.interp.language_models import JudgeFailure, LanguageModel, run_concurrently

TASKS = ("detection", "fuzz")


class JudgeItem(NamedTuple):
    """One window as the judge sees it."""

    str_tokens: list[str]
    marked: np.ndarray | None
    """bool [W] highlighted tokens (fuzzing), None for plain text (detection)."""


class JudgeRequest(NamedTuple):
    """One prompt's worth of work: up to `examples_per_prompt` windows under one explanation."""

    task: str
    """`detection` or `fuzz`."""
    explanation: str
    items: Sequence[JudgeItem]


class Verdict(NamedTuple):
    """The judge's answer on one window."""

    prediction: bool | None
    """None when the request or its parsing failed."""
    probability: float | None
    """P(fires); None on failure."""
    failure: str | None
    """None, a `JudgeFailure` kind ("request", "malformed", "parse") or "explanation" (no usable explanation)."""
    source: str
    """How the probability was obtained: "logprobs", "hard_answers" or "token_membership"."""


def failed(kind: str, n: int, source: str) -> list[Verdict]:
    return [Verdict(None, None, kind, source)] * n


class Judge(Protocol):
    def judge_many(self, requests: Sequence[JudgeRequest], progress: bool = False) -> list[list[Verdict]]:
        """One list of verdicts per request, in order."""
        ...


class TokenJudge:
    """Scores token-list explanations without an LLM.

    Detection: P = max over the window's tokens of 1 - rank / n_listed (1 for the first listed token, 0 for
    an unlisted one); it predicts "fires" when any listed token occurs. Fuzzing: P = the fraction of the
    highlighted tokens that are listed; it predicts "fires" when at least half are.
    """

    source = "token_membership"

    def judge_many(self, requests: Sequence[JudgeRequest], progress: bool = False) -> list[list[Verdict]]:
        return [self._judge(request) for request in requests]

    def _judge(self, request: JudgeRequest) -> list[Verdict]:
        listed = parse_token_list(request.explanation)
        if listed is None:
            return failed("parse", len(request.items), self.source)
        weight = {token: 1 - rank / len(listed) for rank, token in reversed(list(enumerate(listed)))}
        verdicts = []
        for item in request.items:
            if request.task == "detection":
                probability = max((weight.get(token, 0.0) for token in item.str_tokens), default=0.0)
                prediction = probability > 0
            else:
                assert item.marked is not None, "fuzzing items carry their highlighted tokens"
                marked = [token for token, on in zip(item.str_tokens, item.marked, strict=True) if on]
                probability = sum(token in weight for token in marked) / max(len(marked), 1)
                prediction = probability >= 0.5
            verdicts.append(Verdict(prediction, float(probability), None, self.source))
        return verdicts


class LLMJudge:
    """Renders each request as a prompt (marked windows for fuzzing) and asks the backend for n answers."""

    def __init__(self, model: LanguageModel):
        self.model = model

    def judge_many(self, requests: Sequence[JudgeRequest], progress: bool = False) -> list[list[Verdict]]:
        return run_concurrently(self._judge, requests, self.model.concurrency, "judge", progress)

    def _judge(self, request: JudgeRequest) -> list[Verdict]:
        texts = [prompts.render_window(item.str_tokens, item.marked) for item in request.items]
        prompt = prompts.judge_prompt(request.task, request.explanation, texts)
        try:
            answers = self.model.binary_answers(prompt, len(texts))
        except JudgeFailure as failure:
            return failed(failure.kind, len(texts), "logprobs")
        source = "logprobs" if answers.from_logprobs else "hard_answers"
        return [
            Verdict(prediction, probability, None, source)
            for prediction, probability in zip(answers.predictions, answers.probabilities, strict=True)
        ]
