"""TOML files to frozen dataclasses and back: the one loader of experiment and toy configs.

Keys are strict (an unknown key names the valid ones), values are type-checked against the field's
annotation (lists become tuples, ints are accepted where floats go), nested dataclass fields are TOML
tables. Each dataclass checks its own values in `__post_init__`, so a config is fully validated the
moment it is built, before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import operator
import re
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from randsae.errors import UserError

T = TypeVar("T")


def read_toml(
    path: str | Path, what: str = "config file", fix: str = "Check the path given to --config"
) -> dict[str, Any]:
    """The TOML file's tables as plain values; a one-line UserError (ending in `fix`) for a missing, unreadable
    or bad file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a TOML file", fix)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist", fix) from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file", fix) from None
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read ({error.strerror})", fix) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(
            f"{what} {path} is not valid TOML ({error})", f"Fix the syntax at that line, or: {fix}"
        ) from None


def apply_overrides(data: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """A copy of the TOML tables with each `section.key=value` (or top-level `key=value`) set.

    The value is read as a TOML value (`16`, `[1, 2]`, `"text"`, `true`); a bare word that is not one
    (`gpt2`, `cuda:1`, `EleutherAI/pythia-70m`) is taken as a string. The result is built and checked like
    a file, so an override can never slip past validation.
    """
    data = copy.deepcopy(data)
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        path = key.strip().split(".")
        if not equals or not all(_BARE_KEY.fullmatch(part) for part in path):
            raise UserError(
                f"--set {assignment!r} is not key=value", "Write --set section.key=value, e.g. --set sae.k=16"
            )
        table = data
        for depth, part in enumerate(path[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise UserError(
                    f"--set {assignment!r}: {'.'.join(path[: depth + 1])} is not a table",
                    "Set a key inside a [section], e.g. --set sae.k=16",
                )
        table[path[-1]] = _override_value(text.strip(), assignment)
    return data


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _override_value(text: str, assignment: str) -> Any:
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        if text[:1] not in ("[", "{", '"', "'"):  # a bare word: a string
            return text
        parsed = {}
    if set(parsed) != {"value"}:
        raise UserError(
            f"--set {assignment!r}: {text} is not a TOML value", 'Write a number, true/false, a "string" or a [list]'
        )
    return parsed["value"]


def invalid(key: str, value: Any, expected: str) -> UserError:
    """The one-line error for a config value that cannot work: the key as `section.key`, the value, the fix."""
    shown = list(value) if isinstance(value, tuple) else value
    return UserError(f"{key} = {shown!r} is invalid", f"Set {key} to {expected}")


def build_dataclass(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Instantiate dataclass `cls` from a TOML table, recursing into nested dataclass fields."""
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise UserError(f"unknown config key {unknown[0]!r} in {place}", f"Valid keys there: {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        hint, key = hints[name], f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"config key {key!r} must be a table [{key}]", f"Write it as [{key}] ...")
            values[name] = build_dataclass(hint, value, key)  # type: ignore[arg-type]
        else:
            values[name] = coerce(value, hint, key)
    return cls(**values)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check a TOML value against a field's type hint; lists become tuples (their items checked too)."""
    origin = typing.get_origin(hint)
    allowed = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for option in allowed:
        if option is type(None):
            if value is None:
                return None
            continue
        base = typing.get_origin(option) or option
        if base is tuple and isinstance(value, list):
            item_types = [arg for arg in typing.get_args(option) if arg is not Ellipsis]
            item_hint = functools.reduce(operator.or_, item_types) if item_types else Any
            try:
                return tuple(value if item_hint is Any else [coerce(item, item_hint, key) for item in value])
            except UserError:
                continue
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(base, type) and isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
    raise UserError(
        f"config key {key!r} has the wrong type ({type(value).__name__}: {value!r})",
        f"Give it a value of type {type_name(hint)}",
    )


def type_name(hint: Any) -> str:
    """A field's type as a TOML user reads it: `int`, `list of str`, `float, optional`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = ", optional" if type(None) in args else ""
        return " or ".join(type_name(arg) for arg in args if arg is not type(None)) + optional
    if typing.get_origin(hint) is tuple:
        return f"list of {type_name(args[0])}"
    return hint.__name__ if isinstance(hint, type) else str(hint)


def to_plain(value: Any) -> Any:
    """Dataclasses as dicts and tuples as lists; None values, which TOML cannot hold, are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_plain(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if getattr(value, field.name) is not None
        }
    if isinstance(value, tuple):
        return [to_plain(item) for item in value]
    return value


def dump_toml(value: Any) -> str:
    return tomli_w.dumps(to_plain(value))
