"""Explanation health: is the explainer saying something specific about each latent, or repeating itself?

A small LLM explainer can fail quietly: it gives nearly every latent the same explanation, or copies the
category words of its own instructions and examples ("common grammatical role", "adjectives") onto latents
that fire on digits. Scores computed from such explanations sit at chance for every variant, which is the
paper's conclusion reached for the wrong reason. Per SAE, over its sampled latents:

- `distinct_share`: distinct explanations (compared lowercased, letters and digits only) over the
  explanations given (failed and empty ones left out);
- `echo_share`: explanations given that echo the prompt: at least half of their content words (alphabetic,
  3 letters or more, not a stop word) are words of the prompt's instructions or examples;
- `failed_share`: latents whose explanation failed or came back empty, over all sampled latents;
- `median_words`: median length of the explanations given, in words.

A warning is raised when fewer than half the explanations are distinct or more than a fifth echo the prompt.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

MIN_DISTINCT_SHARE = 0.5
MAX_ECHO_SHARE = 0.2
_WORD = re.compile(r"[a-z]+")
_TERM = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    {
        "the",
        "and",
        "for",
        "are",
        "but",
        "not",
        "with",
        "that",
        "this",
        "from",
        "into",
        "its",
        "any",
        "all",
        "one",
        "two",
        "has",
        "have",
        "had",
        "was",
        "were",
        "been",
        "which",
        "when",
        "where",
        "what",
        "who",
        "how",
        "than",
        "then",
        "they",
        "them",
        "their",
        "there",
        "these",
        "those",
        "such",
        "only",
        "also",
        "more",
        "most",
        "some",
        "each",
        "other",
        "about",
        "after",
        "before",
        "over",
        "under",
        "between",
        "like",
        "can",
        "may",
        "might",
        "will",
        "would",
        "should",
        "could",
    }
)
"""Short function words left out of the content words."""


@dataclasses.dataclass(frozen=True)
class ExplanationHealth:
    n_latents: int
    distinct_share: float
    echo_share: float
    failed_share: float
    median_words: float
    warnings: tuple[str, ...]


def content_words(text: str) -> list[str]:
    """The lowercase alphabetic words of 3 letters or more that are not stop words."""
    return [word for word in _WORD.findall(text.lower()) if len(word) >= 3 and word not in STOP_WORDS]


def echoes(explanation: str, vocabulary: frozenset[str]) -> bool:
    """Whether at least half the explanation's content words are the prompt's (False with none)."""
    words = content_words(explanation)
    return bool(words) and 2 * sum(word in vocabulary for word in words) >= len(words)


def explanation_health(explanations: Sequence[str | None], vocabulary: frozenset[str]) -> ExplanationHealth:
    """The health of one SAE's explanations (None or blank: failed), against the prompt's `vocabulary`."""
    given = [text.strip() for text in explanations if text is not None and text.strip()]
    n = len(explanations)
    normalized = {" ".join(_TERM.findall(text.lower())) for text in given}
    distinct = len(normalized) / len(given) if given else float("nan")
    echo = sum(echoes(text, vocabulary) for text in given) / len(given) if given else float("nan")
    warnings = []
    if given and distinct < MIN_DISTINCT_SHARE:
        warnings.append(f"only {distinct:.0%} of the explanations are distinct (fewer than half)")
    if given and echo > MAX_ECHO_SHARE:
        warnings.append(f"{echo:.0%} of the explanations echo the prompt's own words (more than a fifth)")
    return ExplanationHealth(
        n_latents=n,
        distinct_share=distinct,
        echo_share=echo,
        failed_share=(n - len(given)) / n if n else float("nan"),
        median_words=float(np.median([len(text.split()) for text in given])) if given else float("nan"),
        warnings=tuple(warnings),
    )
