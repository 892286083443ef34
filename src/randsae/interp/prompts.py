"""The words sent to an LLM explainer or judge, and how a window is rendered as text.

Kept apart from the logic that fills them (explainers.py, judges.py). Markers go around whole tokens with
their leading space inside (`<< Paris>>`, not `to<< Paris>>`): a marker glued to the previous token misled
small explainers in trials here. Consecutive marked tokens share one marker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A system instruction and a user message; `as_text` flattens it for completion endpoints."""

    system: str
    user: str
    answer_lead: str
    """What the answer starts with in a completion-style prompt ("Explanation:" or "Answer:")."""

    def as_text(self) -> str:
        return f"{self.system}\n\n{self.user}\n\n{self.answer_lead}"


def render_window(str_tokens: Sequence[str], marked: np.ndarray | None = None) -> str:
    """The window's text with each run of marked tokens wrapped in << >>."""
    if marked is None:
        return "".join(str_tokens)
    parts = []
    for i, token in enumerate(str_tokens):
        opens = marked[i] and (i == 0 or not marked[i - 1])
        closes = marked[i] and (i == len(str_tokens) - 1 or not marked[i + 1])
        parts.append(("<<" if opens else "") + token + (">>" if closes else ""))
    return "".join(parts)


EXPLAINER_SYSTEM = (
    "You study one neuron of a language model. You see text excerpts on which it fires; the tokens where it "
    "fires most are marked <<like this>>, and each excerpt lists its marked tokens with the activation from "
    "0 to 10. Say in a few words what the marked tokens have in common (a word, a topic, a grammatical "
    "role, a pattern in the text around them). Finish with one line of the form:\n"
    "Explanation: <a short phrase>\n\n"
    "For instance, for excerpts such as 'the <<red>> car' and 'a <<blue>> sky', the last line would be:\n"
    "Explanation: colour adjectives"
)


def explainer_prompt(texts: Sequence[str], activation_lists: Sequence[Sequence[tuple[str, int]]]) -> Prompt:
    """`texts`: marked windows; `activation_lists`: (token, activation 0-10) of each window's marked tokens."""
    excerpts = []
    for i, (text, activations) in enumerate(zip(texts, activation_lists, strict=True), start=1):
        listed = ", ".join(f"{token!r} {value}" for token, value in activations)
        excerpts.append(f"Excerpt {i}: {text}\nActivations: {listed}")
    user = "\n\n".join(excerpts) + "\n\nWhat do the marked tokens have in common? End with 'Explanation: ...'."
    return Prompt(EXPLAINER_SYSTEM, user, "Explanation:")


DETECTION_SYSTEM = (
    "You check an explanation of a language-model neuron. You get the explanation and {n} numbered text "
    "excerpts. For each excerpt, answer 1 if the neuron, as explained, would fire somewhere in it, else 0. "
    "Reply with only a list of {n} numbers, for instance [1, 0, 0, 1, 0]."
)
FUZZING_SYSTEM = (
    "You check an explanation of a language-model neuron. You get the explanation and {n} numbered text "
    "excerpts in which some tokens are marked <<like this>>. For each excerpt, answer 1 if the marked tokens "
    "are what the explanation describes, else 0. Reply with only a list of {n} numbers, for instance "
    "[1, 0, 0, 1, 0]."
)


def judge_prompt(task: str, explanation: str, texts: Sequence[str]) -> Prompt:
    """A detection (plain texts) or fuzzing (marked texts) prompt with one 0/1 answer per text."""
    system = (DETECTION_SYSTEM if task == "detection" else FUZZING_SYSTEM).format(n=len(texts))
    excerpts = "\n".join(f"Excerpt {i}: {text}" for i, text in enumerate(texts, start=1))
    user = f"Explanation: {explanation}\n\n{excerpts}\n\nReply with a list of {len(texts)} numbers, each 1 or 0."
    # Completion-style prompts open the list for the model: small models then keep to the format.
    return Prompt(system, user, "Answer: [")
