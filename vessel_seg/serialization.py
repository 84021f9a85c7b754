"""Typed dataclasses <-> JSON, and atomic JSON writes.

Plans, fingerprints and case properties are plain dataclasses; this module turns them into JSON
and back without pickling anything, so files from elsewhere are parsed as data only.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from vessel_seg.atomic import write_text_atomic

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, numpy scalars and paths as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy array
        return obj.tolist()
    return obj


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value) if len(args) == 1 else value
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        converted = [_convert(inner, v) for v in value]
        return converted if origin is list else tuple(converted)
    if origin is dict:
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: _convert(vt, v) for k, v in value.items()}
    if tp is float:
        return _number(value, float)
    if tp is int:
        return _number(value, int)
    if tp is bool and not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _number(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` if it is a JSON number of that kind: ``true``, ``"1e3"`` or ``16.5`` for an int are refused.

    Plans and fingerprints are untrusted; a silent ``int(True) == 1`` or ``int(16.5) == 16`` would build
    something else than the file says.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise TypeError(f"expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def from_dict(cls: type[T], data: dict) -> T:
    """Build dataclass ``cls`` from a dict, converting nested dataclasses, lists and tuples.

    Unknown keys are ignored (forward compatibility); missing keys fall back to field defaults.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data}
    return cls(**kwargs)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON via a temporary file in the same folder and ``os.replace``."""
    return write_text_atomic(path, json.dumps(to_jsonable(data), indent=2))


def read_json(path: str | Path) -> Any:
    with open(path) as handle:
        return json.load(handle)
