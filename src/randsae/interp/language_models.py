"""The small interface every LLM backend offers the explainer and the judge, and what they share.

A backend generates text (explanations) and answers a prompt with n binary answers, each with
P("1") / (P("0") + P("1")) read from the model's log-probs when it gives them. A request that fails after
its retries or a reply that cannot be read raises `JudgeFailure`; callers count those, never drop them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol, TypeVar

from randsae.interp.prompts import Prompt

T = TypeVar("T")
R = TypeVar("R")


RETRIED_FAILURES = frozenset({"request", "malformed"})
"""Failure kinds a rerun asks again: the server misbehaved, so a later answer may well be good."""
FAILURE_KINDS = ("request", "malformed", "parse")
"""Every kind; `randsae interpret --retry-failed` asks all of them again."""


class JudgeFailure(Exception):
    """A failed request or unusable reply, by `kind`: "request" (no reply after its retries: timeout,
    connection, HTTP error), "malformed" (a reply that is not the API's JSON), "parse" (a well-formed reply
    whose text does not hold the expected answer: the model's fault, so only `--retry-failed` re-asks)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind} failure: {detail}")
        self.kind = kind
        self.detail = detail


class BinaryAnswers(NamedTuple):
    """n answers to one judge prompt."""

    predictions: list[bool]
    probabilities: list[float]
    """P(1) per answer; equal to the hard answer (0.0 or 1.0) when `from_logprobs` is False."""
    from_logprobs: bool


class TokenChoice(NamedTuple):
    """One generated token with the log-probs of its alternatives (token text -> log-prob)."""

    text: str
    top_logprobs: dict[str, float]


class LanguageModel(Protocol):
    concurrency: int
    """Requests worth running at once (1 for an in-process model)."""

    def generate(self, prompt: Prompt, max_tokens: int) -> str:
        """The model's reply to `prompt`; raises JudgeFailure."""
        ...

    def binary_answers(self, prompt: Prompt, n: int) -> BinaryAnswers:
        """n 0/1 answers to `prompt`; raises JudgeFailure."""
        ...


def answers_from_tokens(tokens: Sequence[TokenChoice] | None, text: str, n: int) -> BinaryAnswers:
    """Read n answers from a reply like "[1, 0, 0, 1, 0]".

    With per-token log-probs, each answer is a generated token that reads 0 or 1 once brackets, commas
    and spaces are stripped, and P(1) comes from its alternatives. Without them (`tokens` None or empty),
    the hard answers are read from the text and the probabilities are those answers.
    """
    if tokens:
        answers = [token for token in tokens if _digit(token.text) is not None][:n]
        if len(answers) == n:
            probabilities = [_probability_of_one(token) for token in answers]
            return BinaryAnswers([_digit(token.text) == "1" for token in answers], probabilities, True)
        raise JudgeFailure("parse", f"expected {n} answers, got {len(answers)} in {text[:200]!r}")
    digits = [char for char in text if char in "01"][:n]
    if len(digits) != n:
        raise JudgeFailure("parse", f"expected {n} answers, got {len(digits)} in {text[:200]!r}")
    return BinaryAnswers([d == "1" for d in digits], [float(d == "1") for d in digits], False)


def _digit(text: str) -> str | None:
    stripped = text.strip(" [],\n\t")
    return stripped if stripped in ("0", "1") else None


def _probability_of_one(token: TokenChoice) -> float:
    """P(1) / (P(0) + P(1)) over the alternatives; the chosen token always counts as one of them."""
    mass = {"0": 0.0, "1": 0.0}
    alternatives = dict(token.top_logprobs)
    for text, logprob in alternatives.items():
        digit = _digit(text)
        if digit is not None:
            mass[digit] += math.exp(logprob)
    if mass["0"] + mass["1"] == 0:
        return float(_digit(token.text) == "1")
    return mass["1"] / (mass["0"] + mass["1"])


def run_concurrently(
    function: Callable[[T], R], items: Sequence[T], workers: int, description: str, progress: bool
) -> list[R]:
    """`[function(item) for item in items]` on `workers` threads, in order, with a progress bar."""
    bar = _bar(len(items), description, progress)
    try:
        if workers <= 1:
            results = []
            for item in items:
                results.append(function(item))
                bar.update(1)
            return results
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(function, item) for item in items]
            results = []
            for future in futures:
                results.append(future.result())
                bar.update(1)
            return results
    finally:
        bar.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, description: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False)


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
