"""The one spec of the ``HollowAttention`` TensorRT plugin (STYLE.md point 5).

Everything that names the plugin -- the ONNX node the exporter emits, the README/docs table,
the C++ creator's PluginField names (checked by ``tests/test_plugin_spec.py``) -- comes from
:data:`HOLLOW_ATTENTION`. :func:`reference_hollow_attention` is the numpy golden of DESIGN.md
§3.1 for the CUDA kernel and the C++ tile math.

Pure Python + numpy: importing this module imports neither torch nor tensorrt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rlens.errors import RlensError


class PluginSpecError(RlensError, ValueError):
    """Attribute values or inputs that the HollowAttention plugin cannot accept."""


@dataclass(frozen=True)
class TensorSpec:
    """One plugin input or output: name, allowed dtypes (ONNX names), shape and layout."""

    name: str
    dtypes: tuple[str, ...]
    shape: str
    description: str


@dataclass(frozen=True)
class AttributeSpec:
    """One ONNX node attribute; ``plugin_field`` ones are PluginFields of the C++ creator."""

    name: str
    type: str  # "int" | "float" | "str"
    description: str
    plugin_field: bool = True
    field_type: str = ""  # nvinfer1::PluginFieldType the plugin serializes it as
    value: str | None = None  # fixed value (plugin_namespace, plugin_version)


@dataclass(frozen=True)
class PluginSpec:
    """A TensorRT plugin and the ONNX node that stands for it."""

    name: str
    namespace: str
    version: str
    onnx_domain: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attributes: tuple[AttributeSpec, ...]
    max_head_dim: int

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes if a.plugin_field)


_FLOAT = ("float32", "float16")

HOLLOW_ATTENTION = PluginSpec(
    name="HollowAttention",
    namespace="rlens",
    version="1",
    onnx_domain="rlens",
    inputs=(
        TensorSpec("q", _FLOAT, "[B, Hq, S, D]", "queries, RoPE applied; query i is at position P + i"),
        TensorSpec(
            "k", _FLOAT, "[B, Hkv, T, D]", "keys, RoPE applied, past included (T = P + S); dtype of q"
        ),
        TensorSpec("v", _FLOAT, "[B, Hkv, T, D]", "values, past included; dtype of q"),
        TensorSpec(
            "visual_span",
            ("int64",),
            "[2]",
            "(start, length) of the visual tokens in chunk coordinates, shared by the batch",
        ),
    ),
    outputs=(TensorSpec("out", _FLOAT, "[B, Hq, S, D]", "attention output; dtype and layout of q"),),
    attributes=(
        AttributeSpec("plugin_namespace", "str", "TensorRT plugin namespace", False, value="rlens"),
        AttributeSpec("plugin_version", "str", "TensorRT plugin version", False, value="1"),
        AttributeSpec(
            "window", "int", "W: a visual query sees visual keys j with 0 <= i - j < W", True, "kINT32"
        ),
        AttributeSpec("num_heads", "int", "Hq, query heads", True, "kINT32"),
        AttributeSpec("num_kv_heads", "int", "Hkv, key/value heads (Hq % Hkv == 0, GQA)", True, "kINT32"),
        AttributeSpec("head_dim", "int", "D, 1..256", True, "kINT32"),
        AttributeSpec(
            "scale", "float", "multiplies q.k before the softmax (usually D**-0.5)", True, "kFLOAT32"
        ),
    ),
    max_head_dim=256,
)

#: PluginField names the C++ ``IPluginCreatorV3One`` declares (and serializes), in order.
FIELD_NAMES: tuple[str, ...] = HOLLOW_ATTENTION.field_names


def make_node_attributes(window: int, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> dict:
    """Attributes of one ``rlens::HollowAttention`` ONNX node, validated, in spec order."""
    ints = {"window": window, "num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim}
    for key, val in ints.items():
        if isinstance(val, bool) or int(val) != val or val < 1:
            raise PluginSpecError(f"HollowAttention {key} must be a positive integer, got {val!r}")
    if num_heads % num_kv_heads:
        raise PluginSpecError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if head_dim > HOLLOW_ATTENTION.max_head_dim:
        limit = HOLLOW_ATTENTION.max_head_dim
        raise PluginSpecError(f"head_dim {head_dim} exceeds the plugin's limit {limit}")
    if not math.isfinite(scale) or scale <= 0:
        raise PluginSpecError(f"HollowAttention scale must be a finite positive number, got {scale!r}")
    values = {"plugin_namespace": HOLLOW_ATTENTION.namespace, "plugin_version": HOLLOW_ATTENTION.version}
    values.update({k: int(v) for k, v in ints.items()})
    values["scale"] = float(scale)
    return {a.name: values[a.name] for a in HOLLOW_ATTENTION.attributes}


def markdown_table(spec: PluginSpec = HOLLOW_ATTENTION) -> str:
    """The plugin contract as Markdown tables (for README / docs/plugin.md)."""
    lines = [
        f"`{spec.name}` -- TensorRT plugin namespace `{spec.namespace}`, version `{spec.version}`, "
        f"ONNX domain `{spec.onnx_domain}`.",
        "",
        "| I/O | name | dtype | shape | meaning |",
        "|---|---|---|---|---|",
    ]
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        for t in tensors:
            lines.append(f"| {kind} | `{t.name}` | {', '.join(t.dtypes)} | `{t.shape}` | {t.description} |")
    lines += ["", "| attribute | type | PluginField | meaning |", "|---|---|---|---|"]
    for a in spec.attributes:
        field = f"`{a.field_type}`" if a.plugin_field else f'no (always `"{a.value}"`)'
        lines.append(f"| `{a.name}` | {a.type} | {field} | {a.description} |")
    return "\n".join(lines) + "\n"


def _check_span(visual_span, q_len: int) -> tuple[int, int]:
    start, length = (int(x) for x in np.asarray(visual_span).reshape(-1)[:2])
    if np.asarray(visual_span).size != 2 or start < 0 or length < 0 or start + length > q_len:
        raise PluginSpecError(
            f"visual_span must be (start, length) inside the chunk of {q_len}, got {visual_span!r}"
        )
    return start, length


def hollow_attention_mask(q_len: int, kv_len: int, visual_span, window: int) -> np.ndarray:
    """Boolean [S, T] mask: True where query i (position P + i) may attend key j (DESIGN §3.1)."""
    if kv_len < q_len or window < 1:
        raise PluginSpecError(f"need kv_len >= q_len and window >= 1, got {kv_len}, {q_len}, {window}")
    start, length = _check_span(visual_span, q_len)
    past = kv_len - q_len
    qpos = past + np.arange(q_len)[:, None]
    kpos = np.arange(kv_len)[None, :]
    lo, hi = past + start, past + start + length
    both_visual = (qpos >= lo) & (qpos < hi) & (kpos >= lo) & (kpos < hi)
    causal = kpos <= qpos
    return causal & ~(both_visual & (qpos - kpos >= window))


def reference_hollow_attention(q, k, v, visual_span, window: int, scale: float) -> np.ndarray:
    """Golden HollowAttention in numpy, float64: q [B,Hq,S,D], k/v [B,Hkv,T,D] -> [B,Hq,S,D]."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    same_bd = q.shape[0] == k.shape[0] and q.shape[-1] == k.shape[-1]
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or not same_bd:
        raise PluginSpecError(f"bad shapes q {q.shape}, k {k.shape}, v {v.shape}")
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % kv_heads:
        raise PluginSpecError(f"num_heads ({heads}) must be a multiple of num_kv_heads ({kv_heads})")
    mask = hollow_attention_mask(q.shape[2], k.shape[2], visual_span, window)
    group = heads // kv_heads
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("bhsd,bhtd->bhst", q, k) * float(scale)
    scores = np.where(mask, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("bhst,bhtd->bhsd", probs, v)
