"""The words sent to an LLM explainer or judge, and how a window is rendered as text.

Kept apart from the logic that fills them (explainers.py, judges.py). Markers go around whole tokens with
their leading space inside (`<< Paris>>`, not `to<< Paris>>`): a marker glued to the previous token misled
small explainers in trials here. Consecutive marked tokens share one marker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from randsae.interp.health import content_words


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


EXPLAINER_PROMPT_VERSION = "2"
"""Recorded in interp.json and in the stored selection's settings: results from another prompt are not mixed.
Version 1 named categories in its instruction ("a word, a topic, a grammatical role") and answered its one
example with "colour adjectives"; small explainers echoed those onto most latents."""


def _excerpt(i: int, text: str, activations: Sequence[tuple[str, int]]) -> str:
    listed = ", ".join(f"{token!r} {value}" for token, value in activations)
    return f"Excerpt {i}: {text}\nActivations: {listed}"


# Each worked example: its marked excerpts and a specific answer, free of category names a small model could
# copy onto every latent (a test checks the answers against `GENERIC_WORDS`).
EXPLAINER_EXAMPLES: tuple[tuple[tuple[tuple[str, tuple[tuple[str, int], ...]], ...], str], ...] = (
    (
        (
            ("she poured a cup<< of>> tea", ((" of", 9),)),
            ("bought two kilos<< of>> rice and a bottle<< of>> oil", ((" of", 10), (" of", 7))),
        ),
        '" of" right after a quantity such as cup, kilo or bottle',
    ),
    (
        (
            ("the meeting on March<< 14>>, 2019 was short", ((" 14", 10),)),
            ("born on 3<< June>> 1990 in Leeds", ((" June", 6),)),
        ),
        "the day or month inside a written date",
    ),
    (
        (
            ("we asked Dr.<< Patel>> about the results", ((" Patel", 10),)),
            ("according to Dr.<< Mary Jones>>, the trial", ((" Mary", 8), (" Jones", 5))),
        ),
        'the name that follows "Dr."',
    ),
)

GENERIC_WORDS = frozenset({"grammatical", "role", "topic", "adjective", "adjectives", "noun", "nouns", "word", "words"})
"""Category names no worked answer may use: small explainers echo the prompt's own answers onto every latent."""


def _examples_text() -> str:
    blocks = []
    for n, (excerpts, answer) in enumerate(EXPLAINER_EXAMPLES, start=1):
        lines = [_excerpt(i, text, acts) for i, (text, acts) in enumerate(excerpts, start=1)]
        blocks.append(f"Example {n}\n" + "\n".join(lines) + f"\nExplanation: {answer}")
    return "\n\n".join(blocks)


EXPLAINER_SYSTEM = (
    "You study one latent of a language model. Each excerpt is text on which it fires: the tokens where it "
    "fires are marked <<like this>>, and the Activations line lists them with their activation from 0 to 10. "
    "Name the specific pattern the marked tokens share: quote the exact tokens or phrase, and say what comes "
    "just before or after them when that matters. Be concrete; say what sets these tokens apart from the "
    "text around them. Finish with one line of the form:\n"
    "Explanation: <a short phrase>\n\n" + _examples_text()
)


def prompt_vocabulary() -> frozenset[str]:
    """The content words (`health.content_words`) of the explainer's instruction and worked examples: an
    explanation made mostly of these words echoes the prompt rather than describing the latent."""
    return frozenset(content_words(EXPLAINER_SYSTEM))


def explainer_prompt(texts: Sequence[str], activation_lists: Sequence[Sequence[tuple[str, int]]]) -> Prompt:
    """`texts`: marked windows; `activation_lists`: (token, activation 0-10) of each window's marked tokens."""
    pairs = zip(texts, activation_lists, strict=True)
    excerpts = [_excerpt(i, text, activations) for i, (text, activations) in enumerate(pairs, start=1)]
    user = "\n\n".join(excerpts) + "\n\nWhat specific pattern do the marked tokens share? End with 'Explanation: ...'."
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
