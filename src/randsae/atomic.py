"""Atomic file writes: write a temporary sibling, then rename it into place, so an interrupted run never
leaves half a file that a resume would trust."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save_safetensors_atomic(path: Path, tensors: dict[str, Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, tmp)
    tmp.replace(path)


def write_json_atomic(path: Path, value: object, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False))
