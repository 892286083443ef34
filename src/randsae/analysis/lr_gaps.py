"""Does the trained-vs-random SAE explained-variance gap keep its sign across learning rates?

With `[train] lr_sweep`, every SAE was trained at each rate and its training.json keeps each candidate's
held-out explained variance (`lr_sweep`: [{lr, explained_variance}], on the selection windows). Per random
variant, layer and rate, the gap is trained's mean candidate EV minus the variant's (means over replicates).
A gap whose sign differs between rates at some layer means the EV verdict depends on the learning rate: a
faster-converging variant can look better or worse than another depending on the rate alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from randsae.analysis.separation import REFERENCE
from randsae.run_dir import SAEKey

Candidates = Mapping[SAEKey, Mapping[float, float]]
"""Per SAE, learning rate -> the candidate's held-out explained variance."""


def ev_gaps(candidates: Candidates) -> dict[tuple[str, int], dict[float, float]]:
    """(random variant, layer) -> {lr: trained mean EV - variant mean EV}, at the rates both sides tried."""
    means: dict[tuple[str, int], dict[float, float]] = {}
    for variant, layer in {(key.variant, key.layer) for key in candidates}:
        tried = [by_lr for key, by_lr in candidates.items() if (key.variant, key.layer) == (variant, layer)]
        rates = set.intersection(*(set(by_lr) for by_lr in tried))
        means[(variant, layer)] = {lr: float(np.mean([by_lr[lr] for by_lr in tried])) for lr in rates}
    gaps = {}
    for (variant, layer), by_lr in means.items():
        trained = means.get((REFERENCE, layer))
        if variant == REFERENCE or trained is None:
            continue
        gaps[(variant, layer)] = {lr: trained[lr] - by_lr[lr] for lr in sorted(trained.keys() & by_lr.keys())}
    return gaps


def lr_dependent(gaps: Mapping[tuple[str, int], Mapping[float, float]]) -> dict[str, str]:
    """Random variant -> the reading of its SAE-EV verdict when the gap's sign differs between rates at some
    layer ("depends on learning rate (layer 3: + at lr 0.001, - at lr 0.0001)"); variants whose gap keeps its
    sign everywhere are left out."""
    flips: dict[str, list[str]] = {}
    for (variant, layer), by_lr in sorted(gaps.items()):
        if len({np.sign(gap) for gap in by_lr.values()}) > 1:
            signs = ", ".join(
                f"{'+' if gap > 0 else '-' if gap < 0 else '0'} at lr {lr:g}" for lr, gap in by_lr.items()
            )
            flips.setdefault(variant, []).append(f"layer {layer}: {signs}")
    return {variant: f"depends on learning rate ({'; '.join(parts)})" for variant, parts in flips.items()}


def _sign(gap: float) -> str:
    return "+" if gap > 0 else "-" if gap < 0 else "0"
