"""Auto-interp scores split by latent type: are random SAEs only as explainable as trained ones on the
single-token latents?

Reads the interp stage's per-latent table `RUN/interp/{judge}/latents.csv` (columns variant, layer, module,
latent, fuzz_auroc, detection_auroc, ...) and labels each scored latent single-token (top-token share at or
above the threshold) or contextual (below it); latents dead on the analysed rows stay unlabelled. The scores
of all scored latents together (the paper's headline AUROCs) come alongside.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from randsae.errors import UserError
from randsae.run_dir import SAEKey

SCORES = ("fuzz_auroc", "detection_auroc")
KINDS = ("single_token", "contextual")


class LatentScores(NamedTuple):
    """The interp stage's scores of one SAE's scored latents."""

    latent: np.ndarray
    """int64 [n_scored]."""
    fuzz_auroc: np.ndarray
    """float64 [n_scored]; NaN where the interp table has no value."""
    detection_auroc: np.ndarray


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_interp_scores(path: Path) -> dict[str, LatentScores]:
    """Scores per SAE module (`SAEKey.module`) from the interp table; {} when the file does not exist. A
    table without the module column (written before replicates) names `variant.layerL`."""
    if not path.is_file():
        return {}
    columns: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"variant", "layer", "latent"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(
                f"{path} lacks the column(s) {', '.join(sorted(missing))}",
                "Rerun `randsae interpret` to rewrite it, or delete it to skip the auto-interp split",
            )
        for line, record in enumerate(reader, start=2):
            try:
                key = record.get("module") or SAEKey(record["variant"], int(record["layer"])).module
                latent = int(record["latent"])
            except (TypeError, ValueError):
                raise UserError(
                    f"{path} line {line}: layer and latent must be integers", "Rerun `randsae interpret` to rewrite it"
                ) from None
            columns[key].append((latent, _float(record.get("fuzz_auroc")), _float(record.get("detection_auroc"))))
    return {
        key: LatentScores(
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows]),
        )
        for key, rows in columns.items()
    }


def split_by_latent_type(
    scores: LatentScores, top_token_share: np.ndarray, threshold: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The scored latents' finite AUROCs, all together (`fuzz_auroc`) and by latent type (`{score}_{kind}`,
    e.g. `fuzz_auroc_contextual`), as (latent ids, AUROCs)."""
    in_range = scores.latent < top_token_share.size
    share = np.full(scores.latent.size, np.nan)
    share[in_range] = top_token_share[scores.latent[in_range]]
    kinds = {"": in_range, **dict(zip(KINDS, (share >= threshold, share < threshold), strict=True))}
    split = {}
    for score in SCORES:
        values = getattr(scores, score)
        for kind, mask in kinds.items():
            keep = mask & np.isfinite(values)
            split[f"{score}_{kind}".rstrip("_")] = (scores.latent[keep], values[keep])
    return split
