"""Reading a JSON object into a dataclass, checking every field's type against its annotation.

A file edited by hand can hold a string where a number belongs (``"forward_s": "fast"``);
built as it is, the dataclass holds it and the first arithmetic on it raises a TypeError
far from the file. Read here, it is refused at once, naming the field by its JSON path
(``stages[0].memory.params``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autopipe._jsonio import json_type
from autopipe.errors import AutopipeError


class MalformedError(ValueError):
    """A JSON value does not have the type its field declares; the message names the field."""


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def read_dataclass(cls: type[Any], data: Any, where: str, *,
                   ignore: Mapping[type, frozenset[str]] | None = None) -> Any:
    """``cls(**data)`` with every field checked (and lists made tuples, objects dataclasses).

    Args:
        cls: a dataclass whose annotations are ``int``, ``float``, ``str``, ``bool``, another
            such dataclass, ``tuple[T, ...]``, ``dict[str, T]``, ``Any`` or ``T | None``.
        data: the JSON object.
        where: its JSON path (``stages[0]``), named in errors.
        ignore: per dataclass, keys its objects may hold that are read elsewhere, or no
            longer (a format's old keys); they are left out.

    Raises:
        MalformedError: ``data`` is not an object, lacks a field without a default, holds a
            key ``cls`` has no field for, or a value of another type (the message names it).
        AutopipeError: a nested dataclass refuses its values (its ``__post_init__``); the
            message is prefixed with its JSON path.
    """
    if not isinstance(data, Mapping):
        raise MalformedError(f"'{where}' is {json_type(data)}, expected an object")
    ignore = ignore or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in data if k not in fields and k not in ignore.get(cls, ()))
    if unknown:
        raise MalformedError(f"'{_join(where, unknown[0])}' is not a field of {where or 'a plan'}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MalformedError(f"'{_join(where, name)}' is missing")
            continue
        values[name] = read_value(hints[name], data[name], _join(where, name), ignore)
    if not where:
        return cls(**values)
    try:
        return cls(**values)
    except AutopipeError as e:  # a nested object's own check (``__post_init__``): name where it is
        raise type(e)(f"'{where}': {e.message}", hint=e.hint) from None


def read_value(hint: Any, value: Any, where: str,
               ignore: Mapping[type, frozenset[str]] | None = None) -> Any:
    """``value`` read as ``hint`` (see ``read_dataclass``).

    Raises:
        MalformedError: it is of another type; the message names ``where``.
    """
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return read_value(rest[0], value, where, ignore)
        raise TypeError(f"cannot read {where} as {hint}")  # no such field: an internal error
    if origin is tuple:
        items = _array(value, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(read_value(args[0], v, f"{where}[{i}]", ignore) for i, v in enumerate(items))
        raise TypeError(f"cannot read {where} as {hint}")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise MalformedError(f"'{where}' is {json_type(value)}, expected an object")
        return {str(k): read_value(args[1], v, f"{where}.{k}", ignore) for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return read_dataclass(hint, value, where, ignore=ignore)
    check = _SCALARS.get(hint)
    if check is None:
        raise TypeError(f"cannot read {where} as {hint}")
    expected, ok = check
    if not ok(value):
        raise MalformedError(f"'{where}' is {_shown(value)}, expected {expected}")
    return float(value) if hint is float else value


def _array(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):  # a tuple: from_json of a to_json in memory
        raise MalformedError(f"'{where}' is {json_type(value)}, expected an array")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_SCALARS: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    int: ("an integer", _is_int),
    float: ("a finite number", _is_number),
    str: ("a string", lambda v: isinstance(v, str)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
}


def _shown(value: Any) -> str:
    """A value as an error shows it: its JSON type, and the value where it is short."""
    kind = json_type(value)
    if isinstance(value, (bool, type(None))):
        return kind
    text = repr(value)
    return f"{kind} {text}" if len(text) <= 40 else kind


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
