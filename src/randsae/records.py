"""Stage results back from JSON: plain values to the dataclasses and NamedTuples that wrote them.

The stages write their result dataclasses as strict JSON (NaN as null, NamedTuples as objects, tuples as
lists); `from_plain` undoes exactly that, guided by the type hints, so a reader (the report, a notebook)
gets the stage's own types back instead of nested dicts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def from_plain(cls: type[T], data: Any) -> T:
    """`data` (parsed JSON) as an instance of `cls`; raises TypeError or KeyError when it does not fit."""
    return typing.cast(T, _convert(cls, data))


def _convert(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if data is None and type(None) in options:
            return None
        return _convert(next(option for option in options if option is not type(None)), data)
    if hint is float:
        return math.nan if data is None else float(data)
    if origin is tuple:
        args = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        if len(args) == 1:
            return tuple(_convert(args[0], item) for item in data)
        return tuple(data)
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or hasattr(hint, "_fields")):
        if not isinstance(data, dict):
            raise TypeError(f"{hint.__name__} needs an object, got {type(data).__name__}")
        hints = typing.get_type_hints(hint)
        names = [field.name for field in dataclasses.fields(hint)] if dataclasses.is_dataclass(hint) else hint._fields
        return hint(**{name: _convert(hints[name], data[name]) for name in names if name in data})
    return data
