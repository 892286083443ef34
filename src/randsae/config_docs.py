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

from randsae.config import MADE_FROM, RESUMABLE, RUN_PARTS, ExperimentConfig, load_config
from randsae.data.tokens import UNKNOWN_WARNING_SHARE
from randsae.errors import UserError
from randsae.model_sweep import ModelEntry
from randsae.toml_config import type_name
from randsae.toy.config import ToyConfig

EXAMPLE_MISTAKES: tuple[tuple[str, ...], ...] = (
    ("layers=[]",),
    ("layers=[3, 3]",),
    ("layers=[-1]",),
    ('layers=["a"]',),
    ("variants=[]",),
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
    ("tokens.train_tokens=-5",),
    ("tokens.heldout_tokens=100",),
    ("tokens.heldout_fraction=1",),
    ("variant.init_scale=0",),
    ("sae.architecture=topk2",),
    ("sae.expansion=0",),
    ("sae.expansion=-1",),
    ("sae.k=0",),
    ('sae.k="16"',),
    ("sae.l1_coefficient=0.1",),
    ('sae.architecture="matryoshka_batchtopk"', "sae.matryoshka_groups=[1, 2]"),
    ("train.batch_size=0",),
    ("train.n_epochs=0",),
    ("train.buffer_tokens=0",),
    ("train.dead_tokens_threshold=0",),
    ("train.dead_tokens_fraction=0",),
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

RUNTIME_CHECKS = f"""Checks that need the model or the text run next, before `randsae run` writes to the run
directory: `--out` is a folder it can write to; a changed config fits the run directory it resumes (below);
the model, revision or file loads (a damaged config.json, safetensors or GGUF file is an error naming it); the
layers exist in it; `tokens.context_size` is at most the model's maximum positions (`max_position_embeddings`,
`n_positions` or the like, when its config names one); and the data source opens and yields a first document
(the files exist and are readable, the Hub data set, split and column exist, the embedded corpus can be
fetched). Text too short for the asked train or held-out tokens is found while tokenizing; a rerun with fewer
tokens then resumes, since nothing finished depends on them yet. Text of which more than
{UNKNOWN_WARNING_SHARE:.0%} of the tokens are the tokenizer's unknown token gets a warning with the share: the
tokenizer does not suit it."""

RESUMING = """Rerunning `randsae run` with the same `--out` resumes the run. Its `config.toml` may differ from
the new config in keys no finished part is made from, and is then rewritten with the new config (the run
prints which keys changed): {resumable}; and `layers` and `variants` may gain entries (the run does the new
work). Any other difference is refused once the run holds a part made with the old value: a one-line error
names the keys, their old and new values and the finished parts they would invalidate (use a new `--out`, or
the old value). A key's change invalidates the part below and every later one (token windows → activation
caches → SAEs → metrics); a `[variant]` key's only the random variants' parts, `model.step0_revision`'s only
the step0 variant's, a dropped layer or variant only its own."""


SEVERAL_MODELS = """A `models` list in place of `[model]` runs the same experiment on each model in turn, into
`models/{label}/` of one run directory (docs/outputs.md), and the report compares them (the paper's size
sweep; `configs/size-sweep.toml`). An entry is a table `[[models]]` of the `[model]` keys above (`name`,
`revision`, `blocks`, ...) and these, or just a name (`models = ["embedded", "EleutherAI/pythia-70m"]`). Every
other key is shared. Also checked when the config loads: labels are distinct folder names; `layers` are block
indices or fractions of depth in (0, 1], not both; `set` changes no `model`, `models` or `layers` key. A model
that cannot be loaded, or whose block list is not found (the error names the entry's `blocks` key), fails
alone: the others run, and the command ends with an error naming it; rerunning resumes every model."""


def resume_section() -> list[str]:
    """The keys a run directory's config may change in, and the first part every other key's change invalidates."""
    paper = ExperimentConfig()
    tables = {field.name for field in dataclasses.fields(paper) if dataclasses.is_dataclass(getattr(paper, field.name))}

    def name(key: str) -> str:
        if key not in tables:
            return f"`{key}`"
        overridden = any(other.startswith(f"{key}.") for other in (*MADE_FROM, *RESUMABLE))
        return f"`[{key}]`" + (" (its other keys)" if overridden else "")

    parts = {"tokens": "token windows", "activations": "activation caches", "saes": "SAEs", "metrics": "metrics"}
    return [
        "## Resuming a run with a changed config",
        "",
        " ".join(RESUMING.format(resumable=", ".join(name(key) for key in RESUMABLE)).split()),
        "",
        "| first invalid part | keys |",
        "| --- | --- |",
        *(
            f"| {parts[part]} | {', '.join(name(key) for key, first in MADE_FROM.items() if first == part)} |"
            for part in RUN_PARTS
        ),
    ]


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
        "## `[[models]]`: several models in one run",
        "",
        " ".join(SEVERAL_MODELS.split()),
        "",
        *key_table(ModelEntry, ModelEntry(), None),
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
        "",
        *resume_section(),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
