"""Attention subgraphs: ordinary causal attention and portable Hollow Attention (DESIGN §3.1).

Hollow Attention is built block-local so that it really skips work: the visual span is cut into
blocks of ``Wb = min(W, length)`` queries; block b attends the text prefix before the span (past
included) plus the keys of blocks b-1 and b, with the exact window mask ``0 <= i - j < W``. Cost
per visual query is ``prefix + 2 Wb`` keys instead of the whole sequence. Text queries (before
and after the span) keep ordinary causal attention over every earlier key.

The same builder code produces the inline portable subgraph and the body of the
``rlens::HollowAttention`` local function (plugin mode), so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from rlens.export.graph import GraphBuilder

NEG = -3.0e38  # masked score (finite: fully masked rows stay finite, as in SDPA with a float mask)
NEG16 = -6.0e4


def group_queries(b: GraphBuilder, q: str, k: str) -> str:
    """q [B, Hq, S, D] -> [B, Hkv, G, S, D] (G query heads share one KV head)."""
    shape = b.vec(b.dim(q, 0), b.dim(k, 1), b.const([-1]), b.dim(q, 2), b.dim(q, 3))
    return b.op("Reshape", [q, shape], label="group_heads")


def ungroup(b: GraphBuilder, x5: str) -> str:
    """[B, Hkv, G, S, D] -> [B, Hq, S, D]."""
    shape = b.vec(b.dim(x5, 0), b.const([-1]), b.dim(x5, 3), b.dim(x5, 4))
    return b.reshape(x5, shape)


def masked_softmax(b: GraphBuilder, scores: str, allowed: str) -> str:
    """Softmax over the last axis of ``scores`` where ``allowed``; computed in fp32."""
    if b.dtype == "fp16":
        scores = b.op("Cast", [scores], to=TensorProto.FLOAT)
    masked = b.op("Where", [allowed, scores, b.const(NEG, np.float32)], label="mask")
    probs = b.op("Softmax", [masked], axis=-1)
    if b.dtype == "fp16":
        probs = b.op("Cast", [probs], to=TensorProto.FLOAT16)
    return probs


def _t(b: GraphBuilder, x: str, rank: int) -> str:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return b.op("Transpose", [x], perm=perm)


def dense_attention(b: GraphBuilder, q5: str, k5: str, v5: str, allowed: str, scale: str | None) -> str:
    """softmax(q k^T * scale | allowed) v with q5 [B,Hkv,G,R,D], k5/v5 [B,Hkv,1,T,D]
    (``scale`` None: q is pre-scaled)."""
    scores = b.op("MatMul", [q5, _t(b, k5, 5)], label="qk")
    if scale is not None:
        scores = b.op("Mul", [scores, scale], label="scale")
    probs = masked_softmax(b, scores, allowed)
    return b.op("MatMul", [probs, v5], label="pv")


def causal_allowed(b: GraphBuilder, qpos: str, t_len: str, key_mask: str | None) -> str:
    """Bool [B or 1, 1, 1, R, T]: key j <= query position, and the key is not padding."""
    kpos = b.op("Range", [b.const(0), b.scalar(t_len), b.const(1)], label="key_positions")
    allowed = b.op("LessOrEqual", [b.op("Unsqueeze", [kpos, b.const([0])]),
                                   b.op("Unsqueeze", [qpos, b.const([1])])], label="causal")
    if key_mask is not None:
        allowed = b.op("And", [allowed, key_mask], label="padding")
    return b.op("Unsqueeze", [allowed, b.const([0, 1])]) if key_mask is None else allowed


def _shape_scalars(b: GraphBuilder, q: str, k: str, span: str, length: str) -> dict[str, str]:
    d = {"S": b.scalar(b.dim(q, 2)), "T": b.scalar(b.dim(k, 2))}
    d["P"] = b.op("Sub", [d["T"], d["S"]], label="past_len")
    d["start"] = b.op("Gather", [span, b.const(0)], axis=0, label="span_start")
    d["len"] = length
    d["end"] = b.op("Add", [d["start"], d["len"]], label="span_end")
    d["abs_start"] = b.op("Add", [d["P"], d["start"]], label="visual_abs_start")
    return d


def hollow_attention(b: GraphBuilder, q: str, k: str, v: str, span: str, window: str, scale: str | None,
                     key_mask: str | None = None, causal: str | None = None) -> str:
    """Hollow attention: q [B,Hq,S,D], k/v [B,Hkv,T,D] (RoPE applied, past included) ->
    [B,Hq,S,D]. ``window`` int64 scalar, ``scale`` float scalar (``None``: q is pre-scaled),
    ``key_mask`` optional bool [B,1,1,1,T] (padding), ``causal`` optional bool [B|1,1,1,S,T]
    (the ordinary causal mask, when the caller has it).

    The text/visual split runs under ``If(span length > 0)``; without a visual span (decode
    steps) the else branch is exactly the ordinary causal attention of an unreduced layer."""
    length = b.op("Gather", [span, b.const(1)], axis=0, label="span_length")

    def grouped(sb: GraphBuilder) -> tuple[str, str, str]:
        return (group_queries(sb, q, k), sb.op("Unsqueeze", [k, sb.const([2])]),
                sb.op("Unsqueeze", [v, sb.const([2])]))

    def hollow(sb: GraphBuilder) -> list[str]:
        d = _shape_scalars(sb, q, k, span, length)
        q5, k5, v5 = grouped(sb)
        with sb.scope("text"):
            text_out = _text_rows(sb, q5, k5, v5, d, scale, key_mask)
        with sb.scope("visual"):
            vis_out = _visual_blocks(sb, q5, k5, v5, d, window, scale, key_mask)
        with sb.scope("merge"):
            start1 = sb.op("Unsqueeze", [d["start"], sb.const([0])])
            before = sb.slice(text_out, sb.const([0]), start1, 3)
            after = sb.slice(text_out, start1, sb.const([2**62]), 3)
            merged = sb.op("Concat", [before, vis_out, after], axis=3)
        return [ungroup(sb, merged)]

    def dense(sb: GraphBuilder) -> list[str]:
        q5, k5, v5 = grouped(sb)
        allowed = causal
        if allowed is None:
            t_len = sb.dim(k, 2)
            past = sb.op("Sub", [sb.scalar(t_len), sb.scalar(sb.dim(q, 2))], label="past_len")
            qpos = sb.op("Range", [past, sb.scalar(t_len), sb.const(1)], label="query_positions")
            allowed = causal_allowed(sb, qpos, t_len, key_mask)
        return [ungroup(sb, dense_attention(sb, q5, k5, v5, allowed, scale))]

    has_visual = b.op("Greater", [length, b.const(0)], label="has_visual")
    return b.if_(has_visual, hollow, dense, [b.onnx_float], label="visual_if")[0]


def _text_rows(b: GraphBuilder, q5: str, k5: str, v5: str, d: dict[str, str], scale: str,
               key_mask: str | None) -> str:
    """Ordinary causal attention for the query rows outside the visual span."""
    rows = b.op("Concat", [b.op("Range", [b.const(0), d["start"], b.const(1)]),
                           b.op("Range", [d["end"], d["S"], b.const(1)])], axis=0, label="text_rows")
    qt = b.op("Gather", [q5, rows], axis=3, label="text_queries")
    qpos = b.op("Add", [rows, d["P"]], label="query_positions")
    allowed = causal_allowed(b, qpos, b.dim(k5, 3), key_mask)
    return dense_attention(b, qt, k5, v5, allowed, scale)


def _blocks(b: GraphBuilder, x5: str, lo: str, n: str, front: str, back: str, nblk: str, wb: str) -> str:
    """Rows lo..lo+n of x5 [B,Hkv,G,*,D], zero-padded (front, back), as [B,Hkv,G,nblk,Wb,D]."""
    lo1 = b.op("Unsqueeze", [lo, b.const([0])])
    hi1 = b.op("Unsqueeze", [b.op("Add", [lo, n]), b.const([0])])
    rows = b.slice(x5, lo1, hi1, 3)
    zero = b.const([0, 0, 0])
    pads = b.op("Concat", [zero, b.op("Unsqueeze", [front, b.const([0])]), b.const([0, 0, 0, 0]),
                           b.op("Unsqueeze", [back, b.const([0])]), b.const([0])], axis=0)
    padded = b.op("Pad", [rows, pads])
    shape = b.vec(b.dim(x5, 0), b.dim(x5, 1), b.dim(x5, 2), b.op("Unsqueeze", [nblk, b.const([0])]),
                  b.op("Unsqueeze", [wb, b.const([0])]), b.dim(x5, 4))
    return b.reshape(padded, shape)


def _local_allowed(b: GraphBuilder, nb: str, wb: str, window: str) -> str:
    """Bool [nb, Wb, 2Wb]: query r of block n sees local key c iff 0 <= Wb + r - c < W and the
    key is not before the span (block 0 has no previous block)."""
    r = b.op("Unsqueeze", [b.op("Range", [b.const(0), wb, b.const(1)]), b.const([1])])
    c = b.op("Unsqueeze", [b.op("Range", [b.const(0), b.op("Mul", [wb, b.const(2)]), b.const(1)]),
                           b.const([0])])
    diff = b.op("Sub", [b.op("Add", [r, wb]), c], label="distance")
    in_window = b.op("And", [b.op("GreaterOrEqual", [diff, b.const(0)]), b.op("Less", [diff, window])])
    n = b.op("Unsqueeze", [b.op("Range", [b.const(0), nb, b.const(1)]), b.const([1, 2])])
    key_off = b.op("Sub", [b.op("Add", [b.op("Mul", [n, wb]), c]), wb], label="key_offset")
    exists = b.op("GreaterOrEqual", [key_off, b.const(0)])
    return b.op("And", [in_window, exists], label="window_mask")


def _visual_blocks(b: GraphBuilder, q5: str, k5: str, v5: str, d: dict[str, str], window: str,
                   scale: str | None, key_mask: str | None) -> str:
    """Block-local attention for the visual queries: [B,Hkv,G,len,D].

    Each block's keys are [every key before the span, block b-1, block b] (copied per block:
    Hkv x (a + 2Wb) x D values, far fewer than the Hq x Wb x (a + 2Wb) scores), so one MatMul
    gives the scores, one Softmax normalizes them and one MatMul reads the values: no score
    tensor is concatenated, scaled or split."""
    length = d["len"]
    wb = b.op("Max", [b.op("Min", [window, length]), b.const(1)], label="block")
    nb = b.op("Div", [b.op("Add", [length, b.op("Sub", [wb, b.const(1)])]), wb], label="num_blocks")
    padq = b.op("Sub", [b.op("Mul", [nb, wb]), length], label="tail_pad")
    qb = _blocks(b, q5, d["start"], length, b.const(0), padq, nb, wb)  # [B,Hkv,G,nb,Wb,D]
    a1 = b.op("Unsqueeze", [d["abs_start"], b.const([0])])
    nb1 = b.op("Unsqueeze", [nb, b.const([0])])
    with b.scope("keys"):
        kb = _block_keys(b, k5, d, nb, wb, padq, a1, nb1)  # [B,Hkv,1,nb,a+2Wb,D]
    with b.scope("values"):
        vb = _block_keys(b, v5, d, nb, wb, padq, a1, nb1)
    scores = b.op("MatMul", [qb, _t(b, kb, 6)], label="qk_local")  # [B,Hkv,G,nb,Wb,a+2Wb]
    if scale is not None:
        scores = b.op("Mul", [scores, scale], label="scale")
    probs = masked_softmax(b, scores, _visual_allowed(b, key_mask, nb, wb, a1, window))
    out = b.op("MatMul", [probs, vb], label="pv_local")  # [B,Hkv,G,nb,Wb,D]
    lead = [b.dim(q5, 0), b.dim(q5, 1), b.dim(q5, 2)]
    flat = b.reshape(out, b.vec(*lead, b.const([-1]), b.dim(q5, 4)))
    return b.slice(flat, b.const([0]), b.op("Unsqueeze", [length, b.const([0])]), 3)


def _block_keys(b: GraphBuilder, x5: str, d: dict[str, str], nb: str, wb: str, padq: str, a1: str,
                nb1: str) -> str:
    """[B,Hkv,1,nb,a+2Wb,D]: the a keys before the span, then the keys of blocks b-1 and b."""
    pre = b.op("Unsqueeze", [b.slice(x5, b.const([0]), a1, 3), b.const([3])])  # [B,Hkv,1,1,a,D]
    shape = b.vec(b.dim(x5, 0), b.dim(x5, 1), b.const([1]), nb1, a1, b.dim(x5, 4))
    pre = b.op("Expand", [pre, shape], label="prefix")
    nbp1 = b.op("Add", [nb, b.const(1)])
    blocks = _blocks(b, x5, d["abs_start"], d["len"], wb, padq, nbp1, wb)
    prev = b.slice(blocks, b.const([0]), nb1, 3)
    cur = b.slice(blocks, b.const([1]), b.op("Unsqueeze", [nbp1, b.const([0])]), 3)
    return b.op("Concat", [pre, prev, cur], axis=4, label="block_keys")


def _visual_allowed(b: GraphBuilder, key_mask: str | None, nb: str, wb: str, a1: str, window: str) -> str:
    """Bool [B|1,1,1,nb,Wb,a+2Wb]: every prefix key (unless padding), then the local window."""
    if key_mask is not None:  # [B,1,1,1,T] -> [B,1,1,1,1,a]
        pre = b.op("Unsqueeze", [b.slice(key_mask, b.const([0]), a1, 4), b.const([4])])
    else:
        pre = b.op("Expand", [b.const(True, np.bool_), b.vec(b.const([1, 1, 1, 1, 1]), a1)])
    batch = b.dim(pre, 0)
    nb1 = b.op("Unsqueeze", [nb, b.const([0])])
    wb1 = b.op("Unsqueeze", [wb, b.const([0])])
    pre6 = b.op("Expand", [pre, b.vec(batch, b.const([1, 1]), nb1, wb1, a1)])
    local = b.op("Unsqueeze", [_local_allowed(b, nb, wb, window), b.const([0, 1, 2])])
    loc6 = b.op("Expand", [local, b.vec(batch, b.const([1, 1]), nb1, wb1, b.op("Mul", [wb1, b.const([2])]))])
    return b.op("Concat", [pre6, loc6], axis=-1, label="allowed")


def emit_portable(b: GraphBuilder, q: str, k: str, v: str, call) -> str:
    """``portable`` mode (:mod:`rlens.attention_modes`): the block-local subgraph inline; q is pre-scaled."""
    with b.scope("HollowAttention"):
        return hollow_attention(b, q, k, v, call.span, b.const(call.window), None, call.key_mask, call.causal)
