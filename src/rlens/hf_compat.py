"""Every assumption rlens makes about transformers' internals, stated once and checked loudly.

rlens runs Hugging Face models for calibration, the PyTorch golden and export verification, and
must touch a few things that are not transformers' public API: the keyword a decoder layer takes
its KV cache under, the attention-function registry, a config's attention implementation, the
cache's per-layer tensors, the rotary embedding's tables, a vision model's feature function.
Each of those touches lives here, behind one function that checks its assumption and raises
:class:`CompatError` -- naming the installed transformers version and the assumption -- instead
of silently getting ``None`` (``kwargs.get("past_key_values")`` returned None for weeks after
transformers renamed the keyword to ``cache``, and the golden was wrong).

No other rlens module imports from ``transformers.*`` submodules or reads private attributes of
transformers objects (tests/test_hf_compat.py checks both, and asserts every assumption against
the installed version). The versions the project is tested with are in ``constraints.txt``; the
drift job of ``.ci/run`` runs the parity tests on the newest transformers.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from rlens.errors import RlensError

#: The tested range (pyproject's ``transformers`` requirement says the same).
TESTED = ">=5.24,<6"
#: Keywords under which a decoder layer / text model may take its KV cache, newest first:
#: transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40).
CACHE_KWARGS = ("cache", "past_key_values")


class CompatError(RlensError):
    """An assumption about transformers' internals does not hold for the installed version."""


def version() -> str:
    import transformers

    return str(transformers.__version__)


def _fail(what: str) -> CompatError:
    return CompatError(f"transformers {version()} (rlens is tested with {TESTED}): {what}; "
                       "see rlens/hf_compat.py")


# ---- KV cache keyword, cache objects ---------------------------------------------------------------
def cache_kwarg(module: Any) -> str:
    """The keyword ``module.forward`` takes its KV cache under (``cache`` or ``past_key_values``)."""
    params = inspect.signature(module.forward).parameters
    for name in CACHE_KWARGS:
        if name in params:
            return name
    raise _fail(f"{type(module).__name__}.forward takes none of {CACHE_KWARGS} (its parameters: "
                f"{', '.join(params)})")


def layer_cache(layer: Any, kwargs: dict[str, Any]) -> Any:
    """The KV cache a decoder layer was called with (None when the caller passed none)."""
    name = cache_kwarg(layer)
    stale = [k for k in CACHE_KWARGS if k != name and k in kwargs]
    if stale:
        raise _fail(f"{type(layer).__name__} takes its cache as {name!r} but was called with {stale}")
    return kwargs[name] if name in kwargs else None


def new_cache(text_config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=text_config)


def cache_seq_length(cache: Any, layer_index: int) -> int:
    """Tokens held for one layer (0 for a layer the cache has not seen yet)."""
    layers = _cache_layers(cache)
    if layer_index >= len(layers):
        return 0
    return int(cache.get_seq_length(layer_index))


def cache_update(cache: Any, key: Any, value: Any, layer_index: int) -> None:
    cache.update(key, value, layer_index)


def cache_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer, [B, Hkv, T, D] each."""
    out = []
    for i, layer in enumerate(_cache_layers(cache)):
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if k is None or v is None:
            raise _fail(f"cache layer {i} ({type(layer).__name__}) has no .keys/.values tensors")
        out.append((k, v))
    return out


def _cache_layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise _fail(f"{type(cache).__name__} has no per-layer .layers list")
    return list(layers)


def output_cache(output: Any) -> Any:
    """The cache a model forward returned (``output.cache``; ``past_key_values`` before 5.24)."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise _fail(f"{type(output).__name__} carries no cache (asked for one with use_cache=True)")


def call_with_cache(module: Any, cache: Any, **kwargs: Any) -> Any:
    """``module(**kwargs)`` with ``cache`` passed under the keyword ``module`` takes."""
    return module(**kwargs, **{cache_kwarg(module): cache})


# ---- attention implementation --------------------------------------------------------------------
def attention_registry() -> MutableMapping[str, Callable[..., Any]]:
    """transformers' global attention-function registry (name -> function)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as reg

    for op in ("__setitem__", "__delitem__", "__contains__", "__getitem__"):
        if not hasattr(reg, op):
            raise _fail(f"ALL_ATTENTION_FUNCTIONS ({type(reg).__name__}) has no {op}")
    return reg


@contextmanager
def attention_functions(functions: dict[str, Callable[..., Any]]) -> Iterator[None]:
    """Register ``functions`` in the attention registry inside the block only (re-entrant)."""
    reg = attention_registry()
    taken = [name for name, fn in functions.items() if name in reg and reg[name] is not fn]
    if taken:
        raise _fail(f"attention function name(s) {taken} are already registered by someone else")
    added = [name for name in functions if name not in reg]
    for name in added:
        reg[name] = functions[name]
    try:
        yield
    finally:
        for name in added:
            del reg[name]


def attention_function(name: str) -> Callable[..., Any]:
    """The attention function a config's implementation name runs ("eager" runs SDPA's math)."""
    reg = attention_registry()
    if name in reg:
        return reg[name]
    if name == "eager":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    raise _fail(f"no attention function registered as {name!r}")


def attn_implementation(config: Any) -> str:
    impl = getattr(config, "_attn_implementation", None)
    if not isinstance(impl, str):
        raise _fail(f"{type(config).__name__}._attn_implementation is {impl!r}, not a name")
    return impl


def with_attn_implementation(config: Any, name: str) -> Any:
    """A shallow copy of ``config`` whose attention implementation is ``name`` (even unregistered)."""
    cfg = copy.copy(config)
    if not hasattr(cfg, "_attn_implementation_internal"):
        raise _fail(f"{type(config).__name__} has no _attn_implementation_internal")
    cfg._attn_implementation_internal = name
    if getattr(cfg, "_attn_implementation", None) != name:
        raise _fail("setting _attn_implementation_internal does not change _attn_implementation")
    return cfg


def attention_scaling(attn: Any) -> float:
    """The softmax scale an attention module applies (``module.scaling``)."""
    scale = getattr(attn, "scaling", None)
    if not isinstance(scale, (int, float)):
        raise _fail(f"{type(attn).__name__} has no numeric .scaling")
    return float(scale)


# ---- rotary embedding ----------------------------------------------------------------------------
def rotary(language_model: Any) -> Any:
    rot = getattr(language_model, "rotary_emb", None)
    if rot is None or getattr(rot, "inv_freq", None) is None:
        raise _fail(f"{type(language_model).__name__} has no rotary_emb with inv_freq")
    return rot


def rotary_inv_freq(language_model: Any) -> Any:
    return rotary(language_model).inv_freq


def rotary_attention_scaling(language_model: Any) -> float:
    return float(getattr(rotary(language_model), "attention_scaling", 1.0))


def mrope_section(language_model: Any) -> tuple[int, ...]:
    section = getattr(rotary(language_model), "mrope_section", None)
    if section is None:
        raise _fail(f"{type(language_model).__name__}.rotary_emb has no mrope_section (M-RoPE)")
    return tuple(int(x) for x in section)


# ---- vision, tokenizer ----------------------------------------------------------------------------
def image_features(model: Any, **inputs: Any) -> Any:
    """``model.model.get_image_features(**inputs)``: the features the decoder's image tokens get."""
    inner = getattr(model, "model", None)
    fn = getattr(inner, "get_image_features", None)
    if fn is None:
        raise _fail(f"{type(model).__name__}.model has no get_image_features")
    return fn(**inputs)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-unicode table (byte-level BPE vocabularies use it)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode as table

    return dict(table())
