"""One colour per variant, the same in every plot, table and dashboard of a report.

The paper's variants get fixed colours, so two reports of different runs read the same way; any other
variant takes the next unused colour in the order the run lists it.
"""

from __future__ import annotations

from collections.abc import Sequence

from randsae.models.variants import VARIANTS

KNOWN_VARIANT_COLORS = dict(
    zip(VARIANTS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#e377c2"), strict=True)
)
"""matplotlib's tab10 colours, one per variant in `VARIANTS` order (trained blue, step0 orange, ...)."""
SPARE_COLORS = ("#7f7f7f", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """Map each variant to a hex colour: fixed for known names, spare colours in order for the rest."""
    colors = {name: KNOWN_VARIANT_COLORS[name] for name in variants if name in KNOWN_VARIANT_COLORS}
    spare = iter(SPARE_COLORS)
    for name in variants:
        if name not in colors:
            colors[name] = next(spare, "#000000")
    return colors
