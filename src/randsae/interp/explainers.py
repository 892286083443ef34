"""Explainers: from a latent's explanation windows to a short text.

The LLM explainer shows the windows with the strongest tokens marked and their activations as integers
0-10, and reads the explanation from a marked final line. The token-list explainer needs no LLM: it names
the tokens carrying most activation mass ("fires on tokens: ..."), which the token judge can check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from randsae.interp import prompts
from randsae.interp.entropy import token_activation_mass
from randsae.interp.examples import WindowSet
from randsae.interp.language_models import JudgeFailure, LanguageModel, run_concurrently

StrTokens = Callable[[Sequence[int]], list[str]]
"""Token ids -> their text pieces, leading spaces kept."""

TOKEN_LIST_LEAD = "fires on tokens:"
EXPLANATION_LINE = re.compile(r"explanation\s*:\s*(.+)", re.IGNORECASE)


class Explanation(NamedTuple):
    text: str
    """The explanation ("" when it failed)."""
    failure: str | None
    """None, or a `JudgeFailure` kind ("request", "malformed", "parse"): the latent's test examples then
    count as failures of kind "explanation"."""
    reply: str
    """The explainer's full reply, kept for inspection."""


def highlight_mask(activations: np.ndarray, threshold: float) -> np.ndarray:
    """bool [m, W]: tokens above `threshold` x their window's max activation."""
    window_max = activations.max(axis=1, keepdims=True)
    return (activations > threshold * window_max) & (activations > 0)


def activation_levels(activations: np.ndarray) -> np.ndarray:
    """int [m, W]: activations scaled to 0-10 by their window's max."""
    window_max = np.maximum(activations.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return np.rint(10 * activations / window_max).astype(np.int64)


def format_token_list(tokens: Sequence[str]) -> str:
    """'fires on tokens: " the", " of"' (JSON-quoted, so commas and spaces inside tokens survive)."""
    return f"{TOKEN_LIST_LEAD} " + ", ".join(json.dumps(token, ensure_ascii=False) for token in tokens)


def parse_token_list(explanation: str) -> list[str] | None:
    """The tokens of a token-list explanation, or None when it is not one."""
    if not explanation.startswith(TOKEN_LIST_LEAD):
        return None
    try:
        tokens = json.loads("[" + explanation[len(TOKEN_LIST_LEAD) :] + "]")
    except json.JSONDecodeError:
        return None
    return tokens if tokens and all(isinstance(token, str) for token in tokens) else None


def parse_explanation(reply: str) -> str | None:
    """The text after the last 'Explanation:' of a reply, or None when there is none."""
    found = EXPLANATION_LINE.findall(reply)
    if not found:
        return None
    text = found[-1].strip().strip("\"'`*").strip()
    return text or None


class TokenListExplainer:
    """Names the `n_tokens` tokens with the largest summed activation over the explanation windows."""

    def __init__(self, n_tokens: int):
        self.n_tokens = n_tokens

    def explain_many(
        self, window_sets: Sequence[WindowSet], str_tokens: StrTokens, progress: bool = False
    ) -> list[Explanation]:
        explanations = []
        for windows in window_sets:
            top = token_activation_mass(windows.token_ids, windows.activations).token_ids[: self.n_tokens]
            if len(top) == 0:
                explanations.append(Explanation("", "parse", "no activation in the explanation windows"))
                continue
            text = format_token_list(str_tokens(top.tolist()))
            explanations.append(Explanation(text, None, text))
        return explanations


class LLMExplainer:
    """Asks a language model, all latents' prompts in flight at once (up to the model's concurrency)."""

    def __init__(self, model: LanguageModel, highlight_threshold: float, max_tokens: int):
        self.model = model
        self.highlight_threshold = highlight_threshold
        self.max_tokens = max_tokens

    def prompt(self, windows: WindowSet, str_tokens: StrTokens) -> prompts.Prompt:
        marked = highlight_mask(windows.activations, self.highlight_threshold)
        levels = activation_levels(windows.activations)
        texts, activation_lists = [], []
        for ids, mask, level in zip(windows.token_ids, marked, levels, strict=True):
            pieces = str_tokens(ids.tolist())
            texts.append(prompts.render_window(pieces, mask))
            activation_lists.append([(pieces[i], int(level[i])) for i in np.flatnonzero(mask)])
        return prompts.explainer_prompt(texts, activation_lists)

    def explain_many(
        self, window_sets: Sequence[WindowSet], str_tokens: StrTokens, progress: bool = False
    ) -> list[Explanation]:
        def explain(windows: WindowSet) -> Explanation:
            if len(windows.window_ids) == 0:
                return Explanation("", "parse", "no explanation windows")
            try:
                reply = self.model.generate(self.prompt(windows, str_tokens), self.max_tokens)
            except JudgeFailure as failure:
                return Explanation("", failure.kind, failure.detail)
            text = parse_explanation(reply)
            return Explanation(text, None, reply) if text else Explanation("", "parse", reply)

        return run_concurrently(explain, window_sets, self.model.concurrency, "explain", progress)
