"""Visual-token pruning methods (FastV, VTW; docs/token_pruning.md), registered like the model
families: a method is one file declaring what differs (does a layer rank the tokens, a fixed
drop ratio, its flag) plus one import line below. Importing this package imports neither torch
nor onnx (the plan and the runtime side read it)."""

from __future__ import annotations

from rlens.errors import InputError
from rlens.pruning.base import PRUNING_METHODS, PruningMethod, register


def pruning_method(name: str) -> PruningMethod:
    try:
        return PRUNING_METHODS[name]
    except KeyError:
        raise InputError(f"unknown token pruning method {name!r}; known: {', '.join(PRUNING_METHODS)}") from None


# Method modules: each is one short file that registers itself.
from rlens.pruning import fastv, vtw  # noqa: E402,F401

__all__ = ["PRUNING_METHODS", "PruningMethod", "pruning_method", "register"]
