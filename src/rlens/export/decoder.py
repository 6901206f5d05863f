"""decoder.onnx written directly from the model's weights (DESIGN §5).

Llama-shaped decoder layers (RMSNorm, q/k/v(+bias)/o projections, RoPE or M-RoPE, GQA attention
with a KV cache, SwiGLU FFN), the final norm and the LM head for the last position. Reduced
layers get Hollow Attention (portable subgraph or ``rlens::HollowAttention`` node) and the
Probe-Activated FFN. Generic: everything family specific comes from :class:`Family`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from rlens.attention_modes import DEFAULT_ATTENTION_MODE, HollowCall, attention_mode
from rlens.export import attention as att
from rlens.export import ffn as ffn_mod
from rlens.export import fused
from rlens.export import tokens as tok
from rlens.export.graph import GraphBuilder, WeightFile
from rlens.plan import LayerPlan, Plan
from rlens.plugins.spec import HOLLOW_ATTENTION

INT64 = TensorProto.INT64


@dataclass(frozen=True)
class DecoderGeometry:
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    mrope_section: tuple[int, ...] | None


def _np(t: Any) -> np.ndarray:
    return t.detach().to("cpu").float().numpy()


def geometry(loaded: Any) -> DecoderGeometry:
    fam, model = loaded.family, loaded.model
    s = fam.sizes(model.config)
    section = fam.rope(model).mrope_section
    return DecoderGeometry(s["num_layers"], s["hidden_size"], s["num_heads"], s["num_kv_heads"],
                           s["head_dim"], s["vocab_size"], section)


def io_names(geo: DecoderGeometry) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{t}" for i in range(geo.num_layers) for t in ("key", "value")]
    present = [f"present.{i}.{t}" for i in range(geo.num_layers) for t in ("key", "value")]
    return (["inputs_embeds", "attention_mask", "position_ids", *past, "visual_span"],
            ["logits", *present])


def _io(geo: DecoderGeometry, dtype: int, first_pruned: int) -> tuple[list, list]:
    """Graph I/O; layers from ``first_pruned`` on have their own (shorter) KV length dims."""
    pos = [3, "batch", "sequence"] if geo.mrope_section else ["batch", "sequence"]
    ins = [helper.make_tensor_value_info("inputs_embeds", dtype, ["batch", "sequence", geo.hidden]),
           helper.make_tensor_value_info("attention_mask", INT64, ["batch", "total_sequence"]),
           helper.make_tensor_value_info("position_ids", INT64, pos)]
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, geo.vocab])]
    for i in range(geo.num_layers):
        pruned = i >= first_pruned
        kv_shape = ["batch", geo.kv_heads, tok.PAST_DIM if pruned else "past_sequence", geo.head_dim]
        out_kv = ["batch", geo.kv_heads, tok.TOTAL_DIM if pruned else "total_sequence", geo.head_dim]
        for t in ("key", "value"):
            ins.append(helper.make_tensor_value_info(f"past_key_values.{i}.{t}", dtype, kv_shape))
            outs.append(helper.make_tensor_value_info(f"present.{i}.{t}", dtype, out_kv))
    ins.append(helper.make_tensor_value_info("visual_span", INT64, [2]))
    return ins, outs


def rms_norm(b: GraphBuilder, x32: str, weight: np.ndarray, eps: float, name: str) -> str:
    """HF RMSNorm on the fp32 stream; returns the graph float type."""
    var = b.op("ReduceMean", [b.op("Mul", [x32, x32], label="square"), b.const([-1])], keepdims=1)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps, np.float32)])])])
    normed = b.cast(b.op("Mul", [x32, inv], label="normalize"), "model")
    return b.op("Mul", [b.weight(name, weight.astype(b.np_float)), normed], label="weight")


def _rope_tables(b: GraphBuilder, loaded: Any, geo: DecoderGeometry) -> tuple[str, str, str, str]:
    """cos, sin [B, 1, S, D] and their halves [B, S, D/2] from ``position_ids`` (M-RoPE: per-frequency
    position row)."""
    rope = loaded.family.rope(loaded.model)
    inv_freq = rope.inv_freq
    with b.scope("rotary"):
        pos = b.op("Unsqueeze", [b.op("Cast", ["position_ids"], to=TensorProto.FLOAT), b.const([-1])])
        freqs = b.op("Mul", [pos, b.const(inv_freq, np.float32)], label="freqs")
        if geo.mrope_section:
            rows = np.concatenate([np.full(n, i % 3) for i, n in enumerate(geo.mrope_section)])
            onehot = (np.arange(3)[:, None] == rows[None, :]).astype(np.float32)[:, None, None, :]
            freqs = b.op("ReduceSum", [b.op("Mul", [freqs, b.const(onehot, np.float32)], label="sections"),
                                       b.const([0])], keepdims=0)
        scale = rope.attention_scaling
        cos, sin = b.op("Cos", [freqs]), b.op("Sin", [freqs])
        if scale != 1.0:
            cos = b.op("Mul", [cos, b.const(scale, np.float32)])
            sin = b.op("Mul", [sin, b.const(scale, np.float32)])
        cos_half, sin_half = b.cast(cos, "model"), b.cast(sin, "model")
        cos = b.op("Unsqueeze", [b.op("Concat", [cos_half, cos_half], axis=-1), b.const([1])])
        sin = b.op("Unsqueeze", [b.op("Concat", [sin_half, sin_half], axis=-1), b.const([1])])
    return cos, sin, cos_half, sin_half


def _rotate(b: GraphBuilder, x: str, cos: str, sin: str, half: int) -> str:
    x1 = b.slice(x, b.const([0]), b.const([half]), 3)
    x2 = b.slice(x, b.const([half]), b.const([2 * half]), 3)
    rotated = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1, label="rotate_half")
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rotated, sin])], label="rope")


@dataclass(frozen=True)
class _Shared:
    cos: str
    sin: str
    key_mask: str  # bool [B,1,1,1,T]
    causal: str  # bool [B,1,1,S,T] ("" in a fused graph without token pruning: not used)
    span: tuple[str, str]  # [1]-shaped start, end of the visual span in the chunk
    rows: ffn_mod.RowMaps | None = None  # text/visual row maps of the chunk (reduced FFN)
    span_input: str = "visual_span"  # int64 [2] (start, length) as the layer sees it
    fused: fused.FusedShared | None = None  # --ops ort: contrib-op inputs (None: standard ops)


def _project(b: GraphBuilder, x: str, lin: Any, name: str, heads: int, head_dim: int, scale: float = 1.0) -> str:
    """x @ W^T + bias as [B, heads, S, head_dim]; ``scale`` is folded into W and bias (in fp32)."""
    w, bias = _np(lin.weight), None if lin.bias is None else _np(lin.bias)
    if scale != 1.0:
        w, bias = w * np.float32(scale), None if bias is None else bias * np.float32(scale)
    y = b.op("MatMul", [x, b.weight(f"{name}.weight_t", w.T, b.np_float)], label="MatMul")
    if bias is not None:
        y = b.op("Add", [y, b.weight(f"{name}.bias", bias.astype(b.np_float))], label="bias")
    y = b.op("Reshape", [y, b.const([0, 0, heads, head_dim])])
    return b.op("Transpose", [y], perm=[0, 2, 1, 3])


def _uses_fused(ctx: _Ctx, i: int) -> bool:
    """Packed q/k/v + RotaryEmbedding for this layer (``--ops ort``; FastV's score layer, VTW's first
    pruned layer and every layer after them keep the standard ops)."""
    tp = ctx.plan.token_pruning
    first_standard = None if tp is None else (tp.score_layer if tp.score_layer is not None else tp.layer)
    return ctx.shared.fused is not None and (first_standard is None or i < first_standard)


def _qkv(b: GraphBuilder, ctx: _Ctx, i: int, x: str, scale: float) -> tuple[str, str, str]:
    """q, k, v as [B, heads, S, D] with RoPE applied; ``scale`` folded into q."""
    geo = ctx.geo
    qp, kp, vp, _ = ctx.family.attention_projections(ctx.family.attention(ctx.layers[i]))
    pre = f"layers.{i}.attn"
    with b.scope("q_proj"):
        q = _project(b, x, qp, f"{pre}.q_proj", geo.heads, geo.head_dim, scale)
    with b.scope("k_proj"):
        k = _project(b, x, kp, f"{pre}.k_proj", geo.kv_heads, geo.head_dim)
    with b.scope("v_proj"):
        v = _project(b, x, vp, f"{pre}.v_proj", geo.kv_heads, geo.head_dim)
    with b.scope("rotary"):
        q = _rotate(b, q, ctx.shared.cos, ctx.shared.sin, geo.head_dim // 2)
        k = _rotate(b, k, ctx.shared.cos, ctx.shared.sin, geo.head_dim // 2)
    return q, k, v


def _qkv_packed(b: GraphBuilder, ctx: _Ctx, i: int, x: str, scale: float) -> tuple[str, str, str]:
    """q, k, v as [B, S, heads*D] from one MatMul, RoPE applied by the contrib op."""
    geo = ctx.geo
    lins = ctx.family.attention_projections(ctx.family.attention(ctx.layers[i]))[:3]
    ws = [_np(m.weight) for m in lins]
    bs = [None if m.bias is None else _np(m.bias) for m in lins]
    ws[0], bs[0] = ws[0] * np.float32(scale), None if bs[0] is None else bs[0] * np.float32(scale)
    w, bias = fused.packed_qkv_weight(*ws, *bs)
    pre = f"layers.{i}.attn.qkv_proj"
    w = b.weight(f"{pre}.weight_t", w.astype(b.np_float))
    bias = None if bias is None else b.weight(f"{pre}.bias", bias.astype(b.np_float))
    sizes = (geo.heads * geo.head_dim, geo.kv_heads * geo.head_dim, geo.kv_heads * geo.head_dim)
    return fused.project_rotate(b, x, w, bias, sizes, (geo.heads, geo.kv_heads), ctx.shared.fused)


def _attention(b: GraphBuilder, ctx: _Ctx, i: int, x: str, lp: LayerPlan | None) -> str:
    geo, attn = ctx.geo, ctx.family.attention(ctx.layers[i])
    pre = f"layers.{i}.attn"
    scale = ctx.family.attention_scale(attn)
    o_proj = ctx.family.attention_projections(attn)[3]
    hollow = lp is not None and lp.hollow_window is not None
    # The attention scale is folded into q_proj (RoPE is linear), except for the plugin node,
    # which takes unscaled q and its ``scale`` attribute.
    folded = not hollow or attention_mode(ctx.attention_mode).prescaled_q
    past = (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
    if _uses_fused(ctx, i) and not hollow:
        q, k, v = _qkv_packed(b, ctx, i, x, scale)
        out, k_all, v_all = fused.group_query_attention(b, q, k, v, past, (geo.heads, geo.kv_heads),
                                                        ctx.shared.fused)
        b.output(k_all, f"present.{i}.key")
        b.output(v_all, f"present.{i}.value")
        return _o_proj(b, o_proj, pre, out)
    if _uses_fused(ctx, i):
        qkv = _qkv_packed(b, ctx, i, x, scale)
        with b.scope("HollowAttention"):
            out, k_all, v_all = fused.hollow_attention(b, qkv, past, ctx.shared.span_input, lp.hollow_window,
                                                       ctx.shared.key_mask, (geo.heads, geo.kv_heads),
                                                       geo.head_dim, ctx.shared.fused)
        b.output(k_all, f"present.{i}.key")
        b.output(v_all, f"present.{i}.value")
        return _o_proj(b, o_proj, pre, out)
    else:
        q, k, v = _qkv(b, ctx, i, x, scale if folded else 1.0)
    k_all = b.op("Concat", [past[0], k], axis=2, label="concat_past_key")
    v_all = b.op("Concat", [past[1], v], axis=2, label="concat_past_value")
    b.output(k_all, f"present.{i}.key")
    b.output(v_all, f"present.{i}.value")
    tp = ctx.plan.token_pruning
    if tp is not None and tp.score_layer == i and tp.layer < geo.num_layers:
        ctx.scores = tok.last_query_scores(b, q, k_all, None if folded else b.fconst(scale), ctx.shared.key_mask)
    if hollow:
        out = _hollow(b, ctx, q, k_all, v_all, lp.hollow_window, scale)
    else:
        q5 = att.group_queries(b, q, k_all)
        k5 = b.op("Unsqueeze", [k_all, b.const([2])])
        v5 = b.op("Unsqueeze", [v_all, b.const([2])])
        out5 = att.dense_attention(b, q5, k5, v5, ctx.shared.causal, None)
        out = att.ungroup(b, out5)
    out = b.op("Reshape", [b.op("Transpose", [out], perm=[0, 2, 1, 3]), b.const([0, 0, -1])])
    return _o_proj(b, o_proj, pre, out)


def _o_proj(b: GraphBuilder, wo: Any, pre: str, out: str) -> str:
    with b.scope("o_proj"):
        y = b.op("MatMul", [out, b.weight(f"{pre}.o_proj.weight_t", _np(wo.weight).T, b.np_float)])
        if wo.bias is not None:
            y = b.op("Add", [y, b.weight(f"{pre}.o_proj.bias", _np(wo.bias).astype(b.np_float))])
    return y


def _hollow(b: GraphBuilder, ctx: _Ctx, q: str, k: str, v: str, window: int, scale: float) -> str:
    geo = ctx.geo
    call = HollowCall(ctx.shared.span_input, window, scale, geo.heads, geo.kv_heads, geo.head_dim,
                      ctx.shared.key_mask, ctx.shared.causal)
    return attention_mode(ctx.attention_mode).emit()(b, q, k, v, call)


@dataclass
class _Ctx:
    loaded: Any
    plan: Plan
    geo: DecoderGeometry
    attention_mode: str
    ops: str = "standard"
    shared: _Shared | None = None
    scores: str | None = None  # FastV: [B, P+S] last-query attention of the score layer

    @property
    def family(self) -> Any:
        return self.loaded.family

    @property
    def layers(self) -> Any:
        return self.family.decoder_layers(self.loaded.model)


def _ffn(b: GraphBuilder, ctx: _Ctx, i: int, x: str, lp: LayerPlan | None) -> str:
    gate, up, down = (_np(m.weight) for m in ctx.family.ffn_linears(ctx.family.ffn(ctx.layers[i])))
    keep = None if lp is None else lp.ffn_keep
    prefix = f"layers.{i}.mlp"
    if keep is not None and ctx.plan.ffn_mode == "static":
        kept_units, rest_units = ffn_mod.static_split(lp.ffn_indices, gate.shape[0])
        kept = ffn_mod.add_ffn_weights(b, prefix, gate, up, down, kept_units, ".kept")
        rest = ffn_mod.add_ffn_weights(b, prefix, gate, up, down, rest_units, ".rest")
        return ffn_mod.static_ffn(b, x, kept, rest, _rows(b, ctx))
    w = ffn_mod.add_ffn_weights(b, prefix, gate, up, down)
    if keep is None:
        return ffn_mod.full_ffn(b, x, w)
    return ffn_mod.reduced_ffn(b, x, w, _rows(b, ctx), ctx.shared.span_input, keep, ctx.plan.ffn_probes)


def _rows(b: GraphBuilder, ctx: _Ctx) -> ffn_mod.RowMaps:
    assert ctx.shared.rows is not None  # built by _shared / _prune when a layer reduces its FFN
    return ctx.shared.rows


def _row_maps(b: GraphBuilder, ctx: _Ctx, start: str, end: str, seq: str) -> ffn_mod.RowMaps | None:
    """Text/visual row maps of the chunk, once per span, when some layer reduces its FFN."""
    if not any(lp.ffn_keep is not None for lp in ctx.plan.layers):
        return None
    return ffn_mod.row_maps(b, start, end, seq)


def _add_norm(b: GraphBuilder, ctx: _Ctx, x32: str, delta: str | None, norm: Any, name: str) -> tuple[str, str]:
    """(RMSNorm(x32 + delta), x32 + delta); ``delta`` None: nothing to add."""
    weight = _np(norm.weight)
    if ctx.ops == "ort" and b.dtype == "fp32":
        gamma = b.weight(name, weight)
        if delta is None:
            return fused.simplified_norm(b, x32, gamma, _eps(norm)), x32
        return fused.skip_norm(b, delta, x32, gamma, _eps(norm))
    if delta is not None:
        x32 = b.op("Add", [x32, b.cast(delta, "fp32")], label="residual")
    return rms_norm(b, x32, weight, _eps(norm), name), x32


def _layer(b: GraphBuilder, ctx: _Ctx, i: int, x32: str, delta: str | None) -> tuple[str, str]:
    """(residual stream before the FFN output is added, FFN output): the next norm adds them."""
    norm1, norm2 = ctx.family.layer_norms(ctx.layers[i])
    lp = ctx.plan.layer(i)
    with b.scope(f"layers.{i}"):
        with b.scope("input_norm"):
            h, x32 = _add_norm(b, ctx, x32, delta, norm1, f"layers.{i}.input_layernorm.weight")
        with b.scope("attn"):
            a = _attention(b, ctx, i, h, lp)
        with b.scope("post_attention_norm"):
            h, x32 = _add_norm(b, ctx, x32, a, norm2, f"layers.{i}.post_attention_layernorm.weight")
        with b.scope("mlp"):
            f = _ffn(b, ctx, i, h, lp)
        return x32, f


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _shared(b: GraphBuilder, ctx: _Ctx) -> _Shared:
    cos, sin, cos_half, sin_half = _rope_tables(b, ctx.loaded, ctx.geo)
    with b.scope("mask"):
        key_mask = b.op("Cast", ["attention_mask"], to=TensorProto.BOOL)
        key_mask = b.op("Unsqueeze", [key_mask, b.const([1, 2, 3])], label="key_mask")
        s = b.dim("inputs_embeds", 1)
        t = b.dim("attention_mask", 1)
        causal = ""  # the fused graph's attention takes an additive bias instead (FastV's standard layers excepted)
        if ctx.ops == "standard" or ctx.plan.token_pruning is not None:
            qpos = b.op("Range", [b.scalar(b.op("Sub", [t, s])), b.scalar(t), b.const(1)], label="query_positions")
            causal = att.causal_allowed(b, qpos, t, key_mask)
    with b.scope("visual_span"):
        start = b.slice("visual_span", b.const([0]), b.const([1]), 0)
        end = b.op("Add", [start, b.slice("visual_span", b.const([1]), b.const([2]), 0)], label="end")
        rows = _row_maps(b, ctx, start, end, s)
    fu = fused.fused_shared(b, cos_half, sin_half, key_mask) if ctx.ops == "ort" else None
    return _Shared(cos, sin, key_mask, causal, (start, end), rows, fused=fu)


def _prune(b: GraphBuilder, ctx: _Ctx, x32: str) -> str:
    """Before the first pruned layer: keep the chunk's kept rows; the following layers get the
    gathered rotary tables, the pruned key mask and the kept visual span."""
    tp = ctx.plan.token_pruning
    with b.scope("token_pruning"):
        past = b.scalar(b.op("Sub", [b.dim("attention_mask", 1), b.dim("inputs_embeds", 1)]))
        rows, start, kept = tok.kept_rows(b, tp, ctx.scores, past)
        x32 = tok.gather_rows(b, x32, rows, 1)
        cos = tok.gather_rows(b, ctx.shared.cos, rows, 2)
        sin = tok.gather_rows(b, ctx.shared.sin, rows, 2)
        own_past = b.dim(f"past_key_values.{tp.layer}.key", 2)
        mask = tok.pruned_mask(b, rows, own_past)
        key_mask = b.op("Unsqueeze", [b.op("Cast", [mask], to=TensorProto.BOOL), b.const([1, 2, 3])])
        t = b.dim(mask, 1)
        qpos = b.op("Range", [b.scalar(b.op("Sub", [t, b.dim(rows, 1)])), b.scalar(t), b.const(1)])
        causal = att.causal_allowed(b, qpos, t, key_mask)
        span = b.op("Concat", [start, kept], axis=0, label="visual_span")
        end = b.op("Add", [start, kept])
        rows = _row_maps(b, ctx, start, end, b.dim(x32, 1))
        ctx.shared = _Shared(cos, sin, key_mask, causal, (start, end), rows, span)
    return x32


def decoder_model(loaded: Any, plan: Plan, mode: str = DEFAULT_ATTENTION_MODE, dtype: str = "fp32",
                  opset: int = 18, weights: WeightFile | None = None, ops: str = "standard") -> onnx.ModelProto:
    """The decoder ModelProto: weights inline, or streamed to ``weights`` as they are made (then the
    proto only points at them and the model's weights are never held a second time).
    ``ops``: "standard" (ONNX ops only) or "ort" (ONNX Runtime contrib ops, :mod:`.fused`)."""
    if ops not in ("standard", "ort") or (ops == "ort" and attention_mode(mode).needs_plugin):
        raise ValueError(f"ops={ops!r} with attention={mode!r}: the plugin mode takes standard ops")
    loaded.family.check_exportable(loaded.model)
    geo = geometry(loaded)
    b = GraphBuilder("decoder", dtype, weights)
    ctx = _Ctx(loaded, plan, geo, mode, ops)
    ctx.shared = _shared(b, ctx)
    x32, delta = b.cast("inputs_embeds", "fp32"), None
    first_pruned = plan.token_pruning.layer if plan.token_pruning is not None else geo.num_layers
    for i in range(geo.num_layers):
        if i == first_pruned:
            x32 = b.op("Add", [x32, b.cast(delta, "fp32")], label="residual") if delta is not None else x32
            x32, delta = _prune(b, ctx, x32), None
        x32, delta = _layer(b, ctx, i, x32, delta)
    with b.scope("final"):
        last = b.slice(x32, b.const([-1]), b.const([2**62]), 1)
        last_delta = b.slice(delta, b.const([-1]), b.const([2**62]), 1)
        h, _ = _add_norm(b, ctx, last, last_delta, ctx.family.final_norm(loaded.model), "norm.weight")
        head = _np(ctx.family.lm_head(loaded.model).weight).T
        logits = b.cast(b.op("MatMul", [h, b.weight("lm_head.weight_t", head, b.np_float)], label="lm_head"), "fp32")
        b.output(logits, "logits")
    ins, outs = _io(geo, b.onnx_float, first_pruned)
    graph = helper.make_graph(b.nodes, "rlens_decoder", ins, outs, b.initializers)
    functions = []
    if any(lp.hollow_window is not None for lp in plan.layers):
        functions = attention_mode(mode).model_functions(dtype, opset)
    return finish_model(graph, opset, functions, ops == "ort")


def finish_model(graph: onnx.GraphProto, opset: int, functions: list | None = None,
                 contrib: bool = False) -> onnx.ModelProto:
    imports = [helper.make_opsetid("", opset)]
    if functions:
        imports.append(helper.make_opsetid(HOLLOW_ATTENTION.onnx_domain, 1))
    if contrib:
        imports.append(helper.make_opsetid(fused.MS, 1))
    model = helper.make_model(graph, opset_imports=imports, functions=functions or [],
                              producer_name="rlens", producer_version="1")
    model.ir_version = 9 if opset <= 20 else 10
    return model
