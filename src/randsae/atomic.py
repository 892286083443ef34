"""Atomic file writes and file checksums.

Every output is written to a temporary sibling, then renamed into place, so an interrupted run never
leaves half a file that a resume would trust.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor


def temporary_sibling(path: Path, shared: bool = False) -> Path:
    """Where `path` is built before its rename. A `shared` file (one several jobs of a split run may write at
    once: the config, token files, combined tables) gets a name of its own per writer, so no writer renames
    another's half-written file; any other keeps one name, which the next try overwrites."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp" if shared else f"{path.name}.tmp")


@contextmanager
def atomic_path(path: Path, shared: bool = False) -> Iterator[Path]:
    """A temporary sibling of `path` to write (a file or a folder); renamed onto `path` when the block
    ends without an error, left behind when it fails (`temporary_sibling`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, shared)
    yield tmp
    tmp.replace(path)


def write_text_atomic(path: Path, text: str, shared: bool = False) -> None:
    with atomic_path(path, shared) as tmp:
        tmp.write_text(text)


def save_safetensors_atomic(path: Path, tensors: dict[str, Tensor], shared: bool = False) -> None:
    with atomic_path(path, shared) as tmp:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, tmp)


def json_ready(value: Any) -> Any:
    """`value` as strict JSON takes it: NaN and infinities become None (null), NamedTuples dicts, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if hasattr(value, "_asdict"):
        return json_ready(value._asdict())
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def write_json_atomic(path: Path, value: Any, indent: int | None = 1, shared: bool = False) -> None:
    """Strict JSON (see `json_ready`), so any JSON reader can read it."""
    text = json.dumps(json_ready(value), indent=indent, ensure_ascii=False, allow_nan=False)
    write_text_atomic(path, text, shared)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
