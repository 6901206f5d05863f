"""Plugin mode: the ONNX local function that gives ``rlens::HollowAttention`` a body.

The node and its attributes come from :mod:`rlens.plugins.spec`; the body is the very builder
code of the portable subgraph (:func:`rlens.export.attention.hollow_attention`), with the
``window`` and ``scale`` attributes read through attribute references. ONNX Runtime inlines it;
TensorRT's builder is told to use the plugin instead (docs/bundle.md).
"""

from __future__ import annotations

import onnx
from onnx import helper

from rlens.export.attention import hollow_attention
from rlens.export.graph import FunctionBuilder
from rlens.plugins.spec import HOLLOW_ATTENTION, make_node_attributes


def hollow_function(dtype: str, opset: int) -> onnx.FunctionProto:
    spec = HOLLOW_ATTENTION
    b = FunctionBuilder(spec.name, dtype)
    window = b.attr_const("window", onnx.AttributeProto.INT, "window")
    scale = b.cast(b.attr_const("scale", onnx.AttributeProto.FLOAT, "scale"), "model")
    q, k, v, span = (t.name for t in spec.inputs)
    out = hollow_attention(b, q, k, v, span, window, scale)
    b.nodes.append(helper.make_node("Identity", [out], [spec.outputs[0].name], name=b.node_name("out")))
    return helper.make_function(
        spec.onnx_domain, spec.name, [t.name for t in spec.inputs], [spec.outputs[0].name], b.nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=[a.name for a in spec.attributes])


def emit_plugin(b, q: str, k: str, v: str, call) -> str:
    """``plugin`` mode (:mod:`rlens.attention_modes`): one ``rlens::HollowAttention`` node on unscaled q."""
    attrs = make_node_attributes(call.window, call.heads, call.kv_heads, call.head_dim, call.scale)
    spec = HOLLOW_ATTENTION
    return b.op(spec.name, [q, k, v, call.span], label=spec.name, domain=spec.onnx_domain, **attrs)


def model_functions(dtype: str, opset: int) -> list[onnx.FunctionProto]:
    """The local functions a plugin-mode decoder carries: the HollowAttention body."""
    return [hollow_function(dtype, opset)]
