"""argparse flags derived from the config dataclasses of :mod:`rlens.configs` (their field
metadata: help, flag, metavar, choices, parser), so a default or a choice is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def cli_fields(config_cls: type, only: set[str] | None = None, exclude: set[str] = frozenset()) -> list:
    """The fields of ``config_cls`` that are flags (declared with :func:`rlens.configs.option`)."""
    return [f for f in dataclasses.fields(config_cls) if "cli" in f.metadata
            and (only is None or f.name in only) and f.name not in exclude]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["cli"]["flag"] or "--" + f.name.replace("_", "-")


def add_flags(p: argparse.ArgumentParser, config_cls: type, only: set[str] | None = None,
              exclude: set[str] = frozenset()) -> None:
    """One flag per CLI field of ``config_cls``; ``dest`` is the field name, the default its default."""
    groups: dict[str, Any] = {}
    for f in cli_fields(config_cls, only, exclude):
        meta = f.metadata["cli"]
        target = p
        if meta["group"]:
            if ("g", meta["group"]) not in groups:
                groups["g", meta["group"]] = p.add_argument_group(meta["group"])
            target = groups["g", meta["group"]]
        if meta["exclusive"]:
            key = ("x", meta["group"], meta["exclusive"])
            if key not in groups:
                groups[key] = target.add_mutually_exclusive_group()
            target = groups[key]
        target.add_argument(flag_of(f), dest=f.name, **_argparse_kwargs(f, meta))


def _argparse_kwargs(f: dataclasses.Field, meta: dict[str, Any]) -> dict[str, Any]:
    help_text = meta["help"]
    if isinstance(f.default, bool):
        return {"action": "store_false" if f.default else "store_true", "default": f.default, "help": help_text}
    if f.default is not None and meta["show_default"]:
        help_text = f"{help_text} (default {f.default})"
    kw: dict[str, Any] = {"default": f.default, "help": help_text}
    if meta["choices"]:
        kw["choices"] = meta["choices"]
    elif meta.get("choices_from"):
        kw["choices"] = LazyChoices(_registry(meta["choices_from"]))
        kw["type"], kw["metavar"] = str, meta["metavar"]
    else:
        kw["type"] = meta["parse"] or (str if f.default is None else type(f.default))
        kw["metavar"] = meta["metavar"]
    return kw


def config_from_args(config_cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """``config_cls`` built from the parsed flags it declares (absent ones keep their default)."""
    values = {f.name: getattr(args, f.name) for f in cli_fields(config_cls) if hasattr(args, f.name)}
    values.update(overrides)
    return config_cls(**values)


def _registry(path: str) -> Any:
    """A loader of the registry ``"module:attribute"`` (imported when first called)."""
    def load() -> Any:
        import importlib

        module, attr = path.split(":")
        return getattr(importlib.import_module(module), attr)

    return load


class LazyChoices:
    """argparse ``choices`` read from a registry only when needed (parsing the flag, ``--help``,
    an error message), so building the parser imports no backend code. Give the flag a
    ``metavar`` (argparse would list the choices at ``add_argument`` otherwise)."""

    def __init__(self, load: Any) -> None:
        self._load = load

    def _names(self) -> tuple[str, ...]:
        return tuple(self._load())

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())
