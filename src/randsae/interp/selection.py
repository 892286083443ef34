"""Which latents get explained: the same number in every SAE, drawn at random among the eligible ones.

Scoring 100 latents of a trained SAE against 40 of a random one would compare different things, so the
number scored is the smallest of (requested, eligible in any SAE) everywhere, and the reduction is
reported rather than hidden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from randsae.errors import UserError


@dataclasses.dataclass(frozen=True)
class LatentSelection:
    """The latents of one SAE chosen for explanation, with the counts the summary reports."""

    latents: tuple[int, ...]
    """Chosen latent indices, ascending."""
    n_requested: int
    n_eligible: int
    """Latents firing on at least `min_examples` positions."""
    n_dead: int
    """Latents that never fire on the held-out tokens."""


def select_latents(
    counts: Mapping[str, np.ndarray], n_latents: int, min_examples: int, seed: int
) -> dict[str, LatentSelection]:
    """Per SAE (keyed by module name): min(n_latents, fewest eligible of any SAE) latents drawn at random,
    seeded by `seed` and the module name so every SAE's draw is reproducible on its own."""
    eligible = {module: np.flatnonzero(c >= min_examples) for module, c in counts.items()}
    if not eligible:
        return {}
    n_scored = min(n_latents, *(len(e) for e in eligible.values()))
    if n_scored == 0:
        empty = sorted(module for module, e in eligible.items() if len(e) == 0)
        raise UserError(
            f"no latent fires on {min_examples}+ held-out positions in {', '.join(empty)}",
            "Lower interp.min_examples or hold out more tokens",
        )
    selections = {}
    for module, candidates in eligible.items():
        rng = np.random.default_rng([seed, *module.encode()])
        chosen = np.sort(rng.choice(candidates, size=n_scored, replace=False))
        selections[module] = LatentSelection(
            latents=tuple(int(i) for i in chosen),
            n_requested=n_latents,
            n_eligible=len(candidates),
            n_dead=int((counts[module] == 0).sum()),
        )
    return selections
