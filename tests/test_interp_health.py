"""Explanation health: distinct explanations, echoes of the prompt, failures, length, and the warnings."""

from __future__ import annotations

import math

import pytest

from randsae.interp.health import content_words, echoes, explanation_health
from randsae.interp.prompts import prompt_vocabulary

OLD_PROMPT = frozenset(
    content_words(  # version 1 of the explainer prompt, the one a small model echoed
        "Say in a few words what the marked tokens have in common (a word, a topic, a grammatical role, a "
        "pattern in the text around them). For instance, for excerpts such as 'the <<red>> car' and 'a <<blue>> "
        "sky', the last line would be: Explanation: colour adjectives"
    )
)


def test_content_words_drop_short_and_stop_words():
    assert content_words("The token ' of' after 3 cups, not two") == ["token", "cups"]


def test_an_explainer_that_echoes_its_prompt_is_flagged():
    # The run: 36 latents, "common grammatical role" 16 times, "Adjectives" 6 times, 14 others distinct.
    others = [f"digits inside numbers {i}" for i in range(12)] + ["dates in citations", "titles before surnames"]
    explanations = ["common grammatical role"] * 16 + ["Adjectives"] * 6 + others
    health = explanation_health(explanations, OLD_PROMPT)
    assert health.n_latents == 36 and health.failed_share == 0
    assert health.distinct_share == pytest.approx(16 / 36)  # 2 repeated + 14 others
    assert health.echo_share == pytest.approx(22 / 36)
    assert len(health.warnings) == 2
    assert "distinct" in health.warnings[0] and "echo the prompt" in health.warnings[1]


def test_a_healthy_explainer_raises_no_warning_and_failures_are_counted_apart():
    explanations = ["numbers inside dates", "the token ' of' after cups", None, "  ", "proper names of cities"]
    health = explanation_health(explanations, prompt_vocabulary())
    assert (health.distinct_share, health.echo_share, health.failed_share) == (1.0, 0.0, 0.4)
    assert health.median_words == 4.0 and health.warnings == ()
    empty = explanation_health([None, None], prompt_vocabulary())
    assert math.isnan(empty.distinct_share) and empty.failed_share == 1.0 and empty.warnings == ()


def test_echo_needs_half_of_the_content_words_from_the_prompt():
    vocabulary = frozenset({"grammatical", "role", "adjectives"})
    assert echoes("grammatical role", vocabulary) and echoes("adjectives of colour", vocabulary)
    assert not echoes("adjectives describing food and drink", vocabulary)  # 1 of 4
    assert not echoes("the of", vocabulary)  # no content word
    assert {"grammatical", "adjectives"} <= OLD_PROMPT and not {"grammatical", "adjectives"} & prompt_vocabulary()
