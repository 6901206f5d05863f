"""Typed JSON records: frozen dataclasses read from JSON with types and bounds checked, written back.

A record's fields carry their documentation and bounds in ``field(metadata=...)`` (use :func:`doc`);
:func:`from_json` checks a parsed JSON value against them and :func:`to_json` writes it back, so the
reader, the writer and the generated docs table (:func:`field_rows`) come from one declaration.
Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Any`` (any JSON), ``tuple[T, ...]``,
``dict[str, T]``, another record, and ``T | None``. No torch, no numpy.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

_MISSING = dataclasses.MISSING


class SchemaError(ValueError):
    """A JSON value that does not fit the record: ``str(e)`` names the field path."""


def doc(text: str, *, lo: float | None = None, hi: float | None = None, choices: tuple[Any, ...] | None = None,
        default: Any = _MISSING, max_len: int = 4096, max_items: int = 4096) -> Any:
    """A dataclass field with its documentation and bounds: ``lo``/``hi``/``choices`` for a number or
    string (for a list: for each element), ``max_len`` for strings, ``max_items`` for lists/objects."""
    meta = {"doc": text, "lo": lo, "hi": hi, "choices": choices, "max_len": max_len, "max_items": max_items}
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fail(where: str, message: str) -> typing.NoReturn:
    raise SchemaError(f"{where}: {message}")


def _check_bounds(value: Any, meta: dict[str, Any], where: str) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, str):
        if len(value) > meta.get("max_len", 4096):
            _fail(where, f"too long ({len(value)} characters)")
    elif not isinstance(value, bool) and (lo is not None and value < lo or hi is not None and value > hi):
        _fail(where, f"{_short(value)} is out of range [{lo}, {hi}]")
    if meta.get("choices") is not None and value not in meta["choices"]:
        _fail(where, f"{value!r} is not one of {list(meta['choices'])}")


def _parse(tp: Any, value: Any, where: str, meta: dict[str, Any]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:  # ``T | None``: T's own error, with its full field path
            return _parse(inner[0], value, where, meta)
        errors = []
        for a in inner:
            try:
                return _parse(a, value, where, meta)
            except SchemaError as e:
                errors.append(str(e))
        _fail(where, errors[0].split(": ", 1)[-1] if len(errors) == 1 else f"unexpected value {_short(value)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            _fail(where, f"expected a list, got {_short(value)}")
        if len(value) > meta.get("max_items", 4096):
            _fail(where, f"too many entries ({len(value)})")
        return tuple(_parse(args[0], v, f"{where}[{i}]", meta) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            _fail(where, f"expected an object, got {_short(value)}")
        if len(value) > meta.get("max_items", 4096):
            _fail(where, f"too many entries ({len(value)})")
        return {str(k): _parse(args[1], v, f"{where}.{k}", meta) for k, v in value.items()}
    return _scalar(tp, value, where, meta)


def _scalar(tp: Any, value: Any, where: str, meta: dict[str, Any]) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a record declared with an unsupported type
        raise TypeError(f"schema: unsupported field type {tp!r}")
    if not ok:
        _fail(where, f"expected {tp.__name__}, got {_short(value)}")
    _check_bounds(value, meta, where)
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def from_json(cls: type, data: Any, where: str = "") -> Any:
    """``cls`` built from parsed JSON, every field type- and bounds-checked; unknown keys are an error."""
    if not isinstance(data, dict):
        _fail(where or cls.__name__, f"expected an object, got {_short(data)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        _fail(where or cls.__name__, f"unknown field(s) {', '.join(map(repr, unknown[:5]))}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is _MISSING and f.default_factory is _MISSING:
                _fail(path, "missing")
            continue
        kwargs[name] = _parse(hints[name], data[name], path, dict(f.metadata))
    try:
        return cls(**kwargs)
    except SchemaError:
        raise
    except ValueError as e:
        _fail(where or cls.__name__, str(e))


def to_json(record: Any) -> Any:
    """The JSON value of a record (tuples as lists, nested records as objects)."""
    if dataclasses.is_dataclass(record):
        return {f.name: to_json(getattr(record, f.name)) for f in dataclasses.fields(record)
                if not f.metadata.get("internal")}
    if isinstance(record, (tuple, list)):
        return [to_json(v) for v in record]
    if isinstance(record, dict):
        return {str(k): to_json(v) for k, v in record.items()}
    if hasattr(record, "item") and callable(record.item):  # numpy scalars
        return record.item()
    return record


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"object of {_type_name(args[1])}"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any JSON"
    if dataclasses.is_dataclass(tp):
        return "object"
    return getattr(tp, "__name__", str(tp))


def field_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, JSON type, bounds, meaning) of every field, nested records expanded."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp, key = hints[f.name], f"{prefix}{f.name}"
        inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        m = f.metadata
        bounds = []
        if m.get("choices"):
            bounds.append(" \\| ".join(map(str, m["choices"])))
        if m.get("lo") is not None or m.get("hi") is not None:
            bounds.append(f"{m.get('lo', '')}..{m.get('hi', '')}")
        rows.append((key, _type_name(tp), ", ".join(bounds), m.get("doc", "")))
        for sub in inner:
            origin = typing.get_origin(tp)
            sep = ".*." if origin is dict else "[]." if origin is tuple else "."
            rows += field_rows(sub, key + sep)
    return rows
