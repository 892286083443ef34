"""What a toy run produces: a row per trained SAE, the per-dataset summaries and the whole result.

Kept apart from `run.py` so the report (and anything else reading results) needs only these types, not
the code that trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

from randsae.toy.config import ToyConfig


@dataclasses.dataclass(frozen=True)
class ToyRow:
    """One trained SAE, scored on the held-out samples of its dataset."""

    data: str
    """`toy` (planted features) or `gaussian` (the control)."""
    network: str
    """`none`, or the random network the data went through."""
    d_sae: int
    seed: int
    l1_coefficient: float
    mmcs: float
    """Against the planted features (for the control: the features of the data it mimics)."""
    fvu: float
    explained_variance: float
    l0: float
    l1: float
    l1_over_sqrt_l2: float
    hoyer: float
    dead_fraction: float


class Recovery(NamedTuple):
    """Best feature recovery of one dataset at one width: MMCS averaged over seeds, best λ."""

    data: str
    network: str
    d_sae: int
    best_mmcs: float
    best_l1_coefficient: float


class FrontGap(NamedTuple):
    """How much more variance SAEs explain on the toy data than on its Gaussian control at equal sparsity."""

    network: str
    measure: str
    gap: float
    """Mean vertical distance between the two Pareto fronts (explained variance), NaN if they don't overlap."""


@dataclasses.dataclass(frozen=True)
class ToyResult:
    config: ToyConfig
    rows: tuple[ToyRow, ...]
    recovery: tuple[Recovery, ...]
    gaps: tuple[FrontGap, ...]
    wall_seconds: float
    """This invocation's wall time (units resumed from disk cost nothing)."""
    out_dir: Path

    def summary(self) -> str:
        """A few lines for the terminal: where the report is, best MMCS, and the L0 Pareto gap."""
        recovery = " · ".join(f"{r.data}/{r.network}/{r.d_sae} {r.best_mmcs:.3f}" for r in self.recovery)
        gaps = " · ".join(f"{g.network} {g.gap:.3f}" for g in self.gaps if g.measure == "l0")
        return (
            f"toy report: {self.out_dir / 'toy_report.html'} ({len(self.rows)} SAEs, {self.wall_seconds:.0f} s)\n"
            f"best MMCS with the planted features: {recovery}\n"
            f"Pareto gap toy − control (explained variance at equal L0): {gaps}"
        )
