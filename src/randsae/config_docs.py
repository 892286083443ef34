"""docs/config.md, generated from the config dataclasses so it cannot go stale.

Every key with its type, its default (the paper's), the embedded default's value where it differs, and its
meaning, which is the field's docstring; then the mistakes a config is checked for when it loads, each
with the error it really gets. `python -m randsae.config_docs > docs/config.md`; a test compares.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from itertools import pairwise
from typing import Any

from randsae.config import ExperimentConfig, load_config
from randsae.errors import UserError
from randsae.toml_config import type_name
from randsae.toy.config import ToyConfig

EXAMPLE_MISTAKES: tuple[tuple[str, ...], ...] = (
    ("layers=[]",),
    ("layers=[3, 3]",),
    ("layers=[-1]",),
    ('layers="3"',),
    ('variants=["trained", "shuffled"]',),
    ('variants=["trained", "trained"]',),
    ('variants=["trained", "step0"]',),
    ("device=gpu",),
    ("activation_dtype=fp16",),
    ("activation_dtype=int8",),
    ('model.name=""',),
    ('model.revision=""',),
    ("model.dtype=fp16",),
    ('data.source=""',),
    ('data.dataset_config=""',),
    ('data.column=""',),
    ("tokens.context_size=1",),
    ("tokens.train_tokens=0",),
    ("tokens.heldout_tokens=100",),
    ("tokens.heldout_fraction=1",),
    ("variant.init_scale=0",),
    ("sae.architecture=topk2",),
    ("sae.expansion=0",),
    ("sae.k=0",),
    ('sae.k="16"',),
    ("sae.l1_coefficient=-1",),
    ("train.batch_size=0",),
    ("train.n_epochs=0",),
    ("train.buffer_tokens=0",),
    ("train.dead_tokens_threshold=0",),
    ("train.log_points=0",),
    ("train.total_tokens=100",),
    ("train.lr=0",),
    ("train.context_size=128",),
    ("train.topk_selection_dtype=int8",),
    ("train.warmup_steps=-1",),
    ("train.auxk_coefficient=-1",),
    ("train.checkpoint_every_s=-1",),
    ("train.max_grad_norm=0",),
    ("eval.ce_windows=0",),
    ("eval.ce_windows=64",),
    ("eval.batch_windows=0",),
    ("interp.n_latents=0",),
    ("interp.window_size=48",),
    ("interp.n_negatives=-1",),
    ("interp.judge=gpt",),
    ("interp.explainer=human",),
    ("interp.api=rest",),
    ("interp.explainer=llm",),
    ("interp.judge=http",),
    ("interp.judge=http", "interp.model=m", "interp.base_url=localhost:8000"),
    ("interp.highlight_threshold=1.5",),
    ("interp.max_failure_fraction=2",),
    ("interp.timeout_s=0",),
    ("analysis.single_token_threshold=1.5",),
    ("analysis.top_windows=0",),
    ("analysis.seed_stability=true", "analysis.stability_seed=0"),
)
"""Mistakes as `randsae run --set` arguments (on the embedded default); every one is a load-time error
naming the key of its last assignment. docs/config.md shows each with its error; a test checks them."""

RUNTIME_CHECKS = """Checks that need the model or the text run as soon as those are loaded, still before any
SAE is trained: a layer past the model's last block, a model, revision or data set that cannot be
opened, and text too short for the asked train or held-out tokens."""


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal right after each field), one line each."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {
        node.target.id: " ".join(after.value.value.split())
        for node, after in pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }


def toml_value(value: Any) -> str:
    """A default as it would be written in TOML."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, int):
        return f"{value:_}"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def code(value: Any) -> str:
    """A value in a table cell; None (no TOML form) is `unset`."""
    return "unset" if value is None else f"`{toml_value(value)}`"


def key_table(cls: type, default: Any, embedded: Any | None) -> list[str]:
    """One markdown row per non-table field of `cls`."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    header = ["key", "type", "default", "embedded default"][: 4 if embedded is not None else 3] + ["meaning"]
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for field in dataclasses.fields(cls):
        value = getattr(default, field.name)
        if dataclasses.is_dataclass(value):
            continue
        cells = [f"`{field.name}`", type_name(hints[field.name]), code(value)]
        if embedded is not None:
            other = getattr(embedded, field.name)
            cells.append(code(other) if other != value else "")
        cells.append(docs.get(field.name, "").replace("|", "\\|"))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def mistake_error(mistake: tuple[str, ...]) -> str:
    """The one-line error the embedded default gets with these `--set` assignments."""
    try:
        load_config(None, mistake)
    except UserError as error:
        return str(error)
    raise AssertionError(f"{mistake} loads without an error")


def render() -> str:
    paper, embedded = ExperimentConfig(), load_config()
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m randsae.config_docs > docs/config.md` from the config dataclasses' field",
        "docstrings; edit those, not this file. -->",
        "",
        "An experiment is a TOML file (`randsae run --config FILE`): a few top-level keys, then one table per",
        "stage. Every key is optional: its **default is the paper's experiment** (Heap et al.: Pythia-70m, all",
        "6 layers, 100M RedPajama tokens, TopK expansion 64, k 32), so an empty file is that experiment, and",
        "`configs/pythia-paper.toml` only adds the data set's configuration and the LLM judge. The **embedded",
        "default** (`src/randsae/configs/default.toml`, what `randsae run` runs without `--config`) overrides",
        "the keys shown in its column. `randsae run --set section.key=value` (repeatable; `key=value` at the",
        "top level) overrides one key of either; the value is TOML (`--set sae.k=16`, `--set layers=[1,2]`), a",
        "bare word a string (`--set model.name=gpt2`). A run directory's `config.toml` holds every key resolved.",
        "",
        "## Top level",
        "",
        *key_table(ExperimentConfig, paper, embedded),
    ]
    docs = field_docs(ExperimentConfig)
    for field in dataclasses.fields(ExperimentConfig):
        section = getattr(paper, field.name)
        if dataclasses.is_dataclass(section):
            lines += [
                "",
                f"## `[{field.name}]`",
                "",
                docs[field.name],
                "",
                *key_table(type(section), section, getattr(embedded, field.name)),
            ]
    lines += [
        "",
        "## Toy configs",
        "",
        "`randsae toy --config FILE` reads a flat TOML file of these keys (no tables); the defaults are the",
        "small sweep of `configs/toy-default.toml`, `configs/toy-paper.toml` is the paper's.",
        "",
        *key_table(ToyConfig, ToyConfig(), None),
        "",
        "## What is checked when a config loads",
        "",
        "The whole config is checked when it is loaded (from `--config`, the embedded default, `--set`, or a",
        "run directory's `config.toml`), before any work starts; a mistake is one line naming the key and the",
        "fix, and the command exits with code 2. A key that is not in the tables above is an error naming the",
        "valid keys of its table; a value of the wrong type is an error naming its key and the type. Each row",
        "below is a mistake made on the embedded default and the error it gets:",
        "",
        "| mistake | error |",
        "| --- | --- |",
        *(
            f"| `{' '.join(f'--set {item}' for item in mistake)}` | {mistake_error(mistake)} |"
            for mistake in EXAMPLE_MISTAKES
        ),
        "",
        " ".join(RUNTIME_CHECKS.split()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
