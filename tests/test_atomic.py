"""Atomic writes leave either the old file or the whole new one; strict JSON; file checksums."""

from __future__ import annotations

import hashlib
import json
import math
from typing import NamedTuple

import pytest

from randsae.atomic import atomic_path, file_sha256, json_ready, write_json_atomic


def test_atomic_path_renames_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new" and not list(target.parent.glob("*.tmp"))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "new"


def test_atomic_path_moves_a_folder(tmp_path):
    with atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert (tmp_path / "model" / "config.json").is_file()


class Pair(NamedTuple):
    low: float
    high: float


def test_write_json_atomic_writes_non_finite_numbers_as_null(tmp_path):
    value = {"a": math.nan, "b": [1.5, math.inf, -math.inf], "pair": Pair(0.25, math.nan), "n": 3, "s": "é"}
    assert json_ready(value) == {
        "a": None,
        "b": [1.5, None, None],
        "pair": {"low": 0.25, "high": None},
        "n": 3,
        "s": "é",
    }
    write_json_atomic(tmp_path / "x.json", value)
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and "é" in text
    assert json.loads(text) == json_ready(value)


def test_file_sha256_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 20_000  # more than one 4 MiB read
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
