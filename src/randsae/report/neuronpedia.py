"""A latent's dashboard as Neuronpedia-style feature JSON (the fields of Neuronpedia's feature records).

Field names follow Neuronpedia's feature export: `pos_str`/`pos_values` (top promoted logits),
`neg_str`/`neg_values` (most suppressed), `freq_hist_data_bar_heights`/`..._values` (activation histogram
as parallel arrays: counts and bin centres), `frac_nonzero`, `maxActApprox`, and `activations`, one record
per example window with `tokens`, `values`, `maxValue`, `maxValueTokenIndex`, `minValue` and the
`binMin`/`binMax`/`binContains` of the group it was drawn from.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from randsae.atomic import json_ready
from randsae.report.latent_data import LatentView, QuantileGroup, Window


def source_id(variant: str, layer: int) -> str:
    """Neuronpedia's `{layer}-{source set}` id, lowercase with hyphens."""
    return f"{layer}-randsae-{variant.lower().replace('_', '-')}"


def model_id(model_name: str) -> str:
    """A Hub id or path shortened to Neuronpedia's model-id style (`EleutherAI/pythia-70m` -> `pythia-70m`)."""
    return model_name.rstrip("/").rsplit("/", 1)[-1].lower() or "unknown-model"


def _activation(window: Window, bin_min: float, bin_max: float, bin_contains: float) -> dict[str, Any]:
    values = list(window.activations)
    return {
        "tokens": list(window.tokens),
        "values": values,
        "maxValue": max(values),
        "maxValueTokenIndex": values.index(max(values)),
        "minValue": min(values),
        "binMin": bin_min,
        "binMax": bin_max,
        "binContains": bin_contains,
    }


def feature_json(view: LatentView, model_name: str, judge: str | None) -> dict[str, Any]:
    """The feature record of one latent, ready for strict JSON (an undefined number is null)."""
    n_windows = view.quantiles[-1].last_rank if view.quantiles else 0
    top_min = min((w.max_activation for w in view.top_windows), default=0.0)
    activations = [
        _activation(w, top_min, view.max_activation, len(view.top_windows) / max(n_windows, 1))
        for w in view.top_windows
    ]
    for group in view.quantiles:
        activations += [_quantile_activation(w, group, n_windows) for w in group.windows]
    edges = view.histogram_edges
    feature: dict[str, Any] = {
        "modelId": model_id(model_name),
        "layer": source_id(view.variant, view.layer),
        "index": str(view.latent),
        "maxActApprox": view.max_activation,
        "frac_nonzero": view.firing_rate,
        "pos_str": [t.token for t in view.promoted_logits or ()],
        "pos_values": [t.value for t in view.promoted_logits or ()],
        "neg_str": [t.token for t in view.suppressed_logits or ()],
        "neg_values": [t.value for t in view.suppressed_logits or ()],
        "freq_hist_data_bar_heights": list(view.histogram_counts),
        "freq_hist_data_bar_values": [(lo + hi) / 2 for lo, hi in pairwise(edges)],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "activations": activations,
        "explanations": [],
        "randsae": {
            "variant": view.variant,
            "layer": view.layer,
            "scores": dict(view.scores),
            "top_tokens": [[t.token, t.value] for t in view.top_tokens],
        },
    }
    if view.explanation is not None:
        feature["explanations"].append(
            {"description": view.explanation, "explanationModelName": judge or "unknown", "typeName": "randsae-interp"}
        )
    return json_ready(feature)


def _quantile_activation(window: Window, group: QuantileGroup, n_windows: int) -> dict[str, Any]:
    share = (group.last_rank - group.first_rank + 1) / max(n_windows, 1)
    return _activation(window, group.min_max_activation, group.max_max_activation, share)
