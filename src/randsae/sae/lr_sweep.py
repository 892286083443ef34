"""Per-SAE learning-rate sweep: every SAE is trained at each rate of `train.lr_sweep` and the one with the best
explained variance on held-out selection rows is kept.

One fixed rate can suit one variant's activations better than another's, so a trained-vs-random gap could come
from the rate rather than the variant; with every candidate's EV recorded, the analysis can check whether a
gap keeps its sign across rates. The selection rows must not be the rows the SAE is then evaluated on, or the
choice would flatter the reported EV: the pipeline takes them from the last held-out windows and leaves those
windows out of the quality metrics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from torch import Tensor

from randsae.sae.trainer import LrCandidate, TrainConfig, TrainResult, explained_variance


def sweep_lr(
    train: Callable[[TrainConfig], Sequence[TrainResult]], cfg: TrainConfig, selection: Sequence[Tensor]
) -> list[TrainResult]:
    """`train(cfg at each rate of cfg.lr_sweep)` returns one result per SAE (in `selection`'s order); per SAE,
    the result whose SAE has the highest EV on its selection rows [n, d_in] (the first rate on a tie or NaN),
    with every candidate in its log's `lr_sweep`. Only the kept and the current candidates are in memory."""
    kept: list[TrainResult | None] = [None] * len(selection)
    best = [-math.inf] * len(selection)
    candidates: list[list[LrCandidate]] = [[] for _ in selection]
    for lr in cfg.lr_sweep:
        results = train(dataclasses.replace(cfg, lr=lr, lr_sweep=()))
        for index, (result, rows) in enumerate(zip(results, selection, strict=True)):
            ev = explained_variance(result.sae, rows.to(result.sae.W_dec.device))
            score = -math.inf if math.isnan(ev) else ev
            if kept[index] is None or score > best[index]:
                kept[index], best[index] = result, score
            candidates[index].append(LrCandidate(lr, ev))
    return [
        TrainResult(result.sae, dataclasses.replace(result.log, lr_sweep=tuple(tried)))
        for result, tried in zip(kept, candidates, strict=True)
        if result is not None
    ]
