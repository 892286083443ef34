"""The report's first section: exactly what was run (model, data, SAE settings, judge, software, stage times),
with a warning box wherever the numbers below it need one to be read right."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping
from typing import Any

from safetensors import safe_open

from randsae.models.load import display_name
from randsae.report.page import definition_list, note
from randsae.report.run_inputs import RunInputs
from randsae.report.tables import variant_chip

SOFTWARE = ("randsae", "torch", "numpy", "matplotlib", "transformers", "safetensors")
CONFIG_TABLES = (("data", "data"), ("tokens", "tokens"), ("sae", "SAE"), ("train", "SAE training"))


def run_header(run: RunInputs, colors: Mapping[str, str]) -> str:
    model = run.config.get("model", {})
    items = [("model", f"{display_name(str(model.get('name', 'unknown')))} (revision {model.get('revision') or 'default'})"),
             ("variants", ", ".join(run.variants)), ("layers", ", ".join(map(str, run.layers)))]
    items += [(title, ", ".join(f"{key} = {_setting(value)}" for key, value in run.config[table].items()))
              for table, title in CONFIG_TABLES if isinstance(run.config.get(table), dict)]
    heldout = run.run_dir / "tokens" / "heldout.safetensors"
    if heldout.is_file():
        with safe_open(heldout, "pt") as file:
            windows, context = file.get_slice("input_ids").get_shape()
        items.append(("held-out tokens", f"{windows * context:,} ({windows} windows × {context})"))
    eval_tokens = sorted({row.get("n_eval_tokens") for row in run.metrics if row.get("n_eval_tokens") is not None})
    if eval_tokens:
        items.append(("metric eval tokens per SAE", ", ".join(f"{n:,}" for n in eval_tokens)))
    warnings = []
    if run.interp and run.interp.saes:
        first = run.interp.saes[0]
        items += [("judge", f"{first.get('judge')} (explainer: {first.get('explainer')})"),
                  ("auto-interp protocol", str(run.interp.summary.get("scaling", "")))]
        warnings = _interp_warnings(run.interp.saes)
    items.append(("software", f"python {platform.python_version()}, " + ", ".join(
        f"{name} {_version(name)}" for name in SOFTWARE)))
    if run.timings:
        total = sum(run.timings.values())
        items.append(("wall time", ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in run.timings.items())
                      + f" (total {total:.1f} s)"))
    chips = " ".join(variant_chip(v, colors) for v in run.variants)
    return f'<h2 id="run">Run</h2>{"".join(warnings)}<p>{chips}</p>{definition_list(items)}'


def _setting(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _interp_warnings(saes: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[str]:
    """Boxes for auto-interp numbers that are easy to misread: the token judge, AUROCs from hard answers,
    failed examples."""
    warnings = []
    if saes[0].get("judge") == "token":
        warnings.append(note("Auto-interp used the LLM-free token judge: explanations are token lists scored by "
                             "token membership, not an LLM's judgement. Its AUROCs measure how single-token the "
                             "latents are, and are not comparable to the paper's LLM-judged numbers.", warning=True))
    sources = {sae[task]["probability_source"] for sae in saes for task in ("fuzz", "detection")}
    if any(source == "hard_answers" or source.startswith("mixed") for source in sources):
        warnings.append(note("The judge returned no log-probabilities for some or all examples: those AUROCs come "
                             "from 0/1 answers (probabilities from: " + ", ".join(sorted(sources)) + ").",
                             warning=True))
    failed = sum(sae[task]["n_failed"] for sae in saes for task in ("fuzz", "detection"))
    if failed:
        total = sum(sae[task]["n_examples"] for sae in saes for task in ("fuzz", "detection"))
        warnings.append(note(f"{failed} of {total} judged examples failed (no usable answer); they count as wrong "
                             "and score 0.5 in every AUROC, as the interp stage reports them.", warning=True))
    return warnings
