"""Attention export modes (DESIGN §5.1): name -> what the exporter emits for a hollow layer.

Plain data, like :data:`rlens.runtime.backends.BACKENDS`: the exporter, ``build-engine``, the
runtime and the CLI read this table and never compare mode names. A new mode is one file with
its emitter (``emit(b, q, k, v, hollow)`` -> output name, see :class:`HollowCall`) and one line
here. Importing this module imports neither onnx nor torch (the runtime reads it too).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from rlens.errors import InputError


@dataclass(frozen=True)
class AttentionMode:
    name: str
    help: str
    #: "module:function" emitting one hollow layer's attention into decoder.onnx (export side)
    emitter: str
    #: q reaches the emitter with the attention scale folded into q_proj (False: unscaled q, the
    #: emitter applies ``HollowCall.scale`` itself)
    prescaled_q: bool = True
    #: "module:function" (dtype, opset) -> ONNX local functions decoder.onnx must carry, or ""
    functions: str = ""
    #: hollow layers are custom-op nodes: TensorRT needs the plugin library to build or run them
    needs_plugin: bool = False

    def emit(self) -> Callable[..., str]:
        return _load(self.emitter)

    def model_functions(self, dtype: str, opset: int) -> list[Any]:
        return list(_load(self.functions)(dtype, opset)) if self.functions else []


#: mode name -> mode (the first is the default)
ATTENTION_MODES: dict[str, AttentionMode] = {m.name: m for m in (
    AttentionMode("portable", "hollow layers as standard ONNX ops (block-local attention; any ONNX Runtime EP, "
                  "TensorRT without plugins)", "rlens.export.attention:emit_portable"),
    AttentionMode("plugin", "hollow layers as rlens::HollowAttention nodes with an ONNX function body (ONNX "
                  "Runtime runs the body; TensorRT uses the plugin)", "rlens.export.plugin:emit_plugin",
                  prescaled_q=False, functions="rlens.export.plugin:model_functions", needs_plugin=True),
)}
DEFAULT_ATTENTION_MODE = next(iter(ATTENTION_MODES))


def attention_mode(name: str | None) -> AttentionMode:
    """The mode called ``name`` (None: the default); one clear error for an unknown name."""
    if name is None:
        return ATTENTION_MODES[DEFAULT_ATTENTION_MODE]
    try:
        return ATTENTION_MODES[name]
    except KeyError:
        raise InputError(f"unknown attention mode {name!r}; choose one of {', '.join(ATTENTION_MODES)}") from None


def needs_plugin(name: str | None) -> bool:
    """Whether a bundle exported in mode ``name`` (its manifest's "attention") needs the plugin."""
    return name in ATTENTION_MODES and ATTENTION_MODES[name].needs_plugin


@dataclass(frozen=True)
class HollowCall:
    """What an emitter gets besides q [B,Hq,S,D] and k/v [B,Hkv,T,D] (RoPE applied, past included)."""

    span: str  # int64 [2] visual span (start, length) of the chunk as this layer sees it
    window: int
    scale: float  # the attention scale (already folded into q when the mode is ``prescaled_q``)
    heads: int
    kv_heads: int
    head_dim: int
    key_mask: str | None  # bool [B,1,1,1,T] padding mask
    causal: str | None  # bool [B|1,1,1,S,T] ordinary causal mask


def _load(ref: str) -> Callable[..., Any]:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)
