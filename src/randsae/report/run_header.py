"""The report's first section: exactly what was run (model, data, SAE settings, judge, software, stage times),
with a warning box wherever the numbers below it need one to be read right."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from randsae.data.tokens import load_tokens
from randsae.interp.summary import SAEInterp
from randsae.models.load import display_name
from randsae.report.page import definition_list, note
from randsae.report.run_inputs import RunInputs
from randsae.report.tables import variant_chip
from randsae.toml_config import to_plain

SOFTWARE = ("randsae", "torch", "numpy", "matplotlib", "transformers", "safetensors")
CONFIG_TABLES = (("data", "data"), ("tokens", "tokens"), ("sae", "SAE"), ("train", "SAE training"))


def run_header(run: RunInputs, colors: Mapping[str, str]) -> str:
    items = []
    if run.config is not None:
        model = run.config.model
        items.append(("model", f"{display_name(model.name)} (revision {model.revision or 'default'})"))
    items += [("variants", ", ".join(run.variants)), ("layers", ", ".join(map(str, run.layers)))]
    if run.config is not None:
        items += [
            (
                title,
                ", ".join(f"{key} = {_setting(value)}" for key, value in to_plain(getattr(run.config, table)).items()),
            )
            for table, title in CONFIG_TABLES
        ]
    heldout = run.run.tokens("heldout")
    if heldout.is_file():
        windows, context = load_tokens(heldout).shape
        items.append(("held-out tokens", f"{windows * context:,} ({windows} windows × {context})"))
    eval_tokens = sorted({row.n_eval_tokens for row in run.metrics})
    items.append(("metric eval tokens per SAE", ", ".join(f"{n:,}" for n in eval_tokens)))
    predictions = sorted({row.n_downstream_predictions for row in run.metrics})
    items.append(("CE/KL predictions per SAE", ", ".join(f"{n:,}" for n in predictions)))
    warnings = []
    if run.interp and run.interp.summary.saes:
        first = run.interp.summary.saes[0]
        items += [
            ("judge", f"{first.judge} (explainer: {first.explainer})"),
            ("auto-interp protocol", run.interp.summary.scaling),
        ]
        warnings = _interp_warnings(run.interp.summary.saes)
    items.append(
        (
            "software",
            f"python {platform.python_version()}, " + ", ".join(f"{name} {_version(name)}" for name in SOFTWARE),
        )
    )
    if run.timings:
        total = sum(run.timings.values())
        items.append(
            (
                "wall time",
                ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in run.timings.items())
                + f" (total {total:.1f} s)",
            )
        )
    chips = " ".join(variant_chip(v, colors) for v in run.variants)
    return f'<h2 id="run">Run</h2>{"".join(warnings)}<p>{chips}</p>{definition_list(items)}'


def _setting(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _interp_warnings(saes: Sequence[SAEInterp]) -> list[str]:
    """Boxes for auto-interp numbers that are easy to misread: the token judge, AUROCs from hard answers,
    failed examples."""
    warnings = []
    if saes[0].judge == "token":
        warnings.append(
            note(
                "Auto-interp used the LLM-free token judge: explanations are token lists scored by "
                "token membership, not an LLM's judgement. Its AUROCs measure how single-token the "
                "latents are, and are not comparable to the paper's LLM-judged numbers.",
                warning=True,
            )
        )
    sources = {getattr(sae, task).probability_source for sae in saes for task in ("fuzz", "detection")}
    if any(source == "hard_answers" or source.startswith("mixed") for source in sources):
        warnings.append(
            note(
                "The judge returned no log-probabilities for some or all examples: those AUROCs come "
                "from 0/1 answers (probabilities from: " + ", ".join(sorted(sources)) + ").",
                warning=True,
            )
        )
    failed = sum(getattr(sae, task).n_failed for sae in saes for task in ("fuzz", "detection"))
    if failed:
        total = sum(getattr(sae, task).n_examples for sae in saes for task in ("fuzz", "detection"))
        warnings.append(
            note(
                f"{failed} of {total} judged examples failed (no usable answer); they count as wrong "
                "and score 0.5 in every AUROC, as the interp stage reports them.",
                warning=True,
            )
        )
    return warnings
