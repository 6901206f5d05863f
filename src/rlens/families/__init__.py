"""The registry of model families (DESIGN §2). Each family module registers itself on import of
this package; the registry is rlens' own state, nothing outside rlens is touched."""

from __future__ import annotations

from typing import Any

from rlens.errors import ModelError
from rlens.families.base import NO_SPAN, Family, VisualSpan

_REGISTRY: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator adding a family to the registry."""
    if cls.name in _REGISTRY:
        raise ValueError(f"family {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def all_families() -> dict[str, type[Family]]:
    return dict(_REGISTRY)


def supported_architectures() -> list[str]:
    return sorted(a for f in _REGISTRY.values() for a in f.architectures)


def family_for_config(config: Any) -> type[Family]:
    """The family of a transformers config, or one clear error listing the supported ones."""
    archs = tuple(getattr(config, "architectures", None) or ())
    model_type = getattr(config, "model_type", None)
    for fam in _REGISTRY.values():
        if any(a in fam.architectures for a in archs):
            return fam
    for fam in _REGISTRY.values():
        if model_type in fam.model_types:
            return fam
    got = ", ".join(archs) or f"model_type={model_type!r}"
    raise ModelError(
        f"unsupported architecture {got}; rlens supports: {', '.join(supported_architectures())}"
    )


def family_by_name(name: str) -> type[Family]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown family {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


# Family modules: each is one short file that registers itself.
from rlens.families import idefics3, internvl, llava, qwen2_vl  # noqa: E402,F401

__all__ = [
    "NO_SPAN",
    "Family",
    "VisualSpan",
    "all_families",
    "family_by_name",
    "family_for_config",
    "register",
    "supported_architectures",
]
