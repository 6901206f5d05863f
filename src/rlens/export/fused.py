"""ONNX Runtime contrib-op builders for ``--ops ort`` (domain ``com.microsoft``).

Unreduced layers run one ``GroupQueryAttention`` each (causal attention, GQA and the KV cache in
one kernel) fed by one packed q/k/v ``MatMul`` and ``RotaryEmbedding``; residual sums and RMSNorm
become ``SkipSimplifiedLayerNormalization``. The graph stays exact:

- RoPE (M-RoPE included) uses rlens' own per-token tables: the chunk's cos/sin rows are the
  op's ``cos_cache``/``sin_cache`` (flattened to [B*S, D/2]) and its position ids index them
  (row ``b*S + s``), so any position scheme a family computes is applied as is.
- Padding keys are masked with an additive ``attention_bias`` [B, 1, S, T] (0 or a large
  negative); ``seqlens_k`` is ``T - 1`` for every row, so GroupQueryAttention's own causal rule
  (query ``P + s`` sees keys ``<= P + s``) is the ordinary causal mask.
- The attention scale is folded into the q rows of the packed weight (``scale=1``).

ONNX Runtime's CPU GroupQueryAttention refuses a batch above 1 with a multi-token chunk after a
non-empty past (its own error message); prefill from an empty cache and decode steps are fine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from rlens.export.graph import GraphBuilder

MS = "com.microsoft"
BIAS_NEG = -3.0e38


@dataclass(frozen=True)
class FusedShared:
    """Per-chunk inputs of the fused attention, built once for all layers."""

    cos: str  # [B*S, D/2] graph float
    sin: str
    rope_pos: str  # int64 [B, S]: row of the table for each token (b * S + s)
    seqlens_k: str  # int32 [B]: T - 1
    total_len: str  # int32 scalar: T
    bias: str  # graph float [B, 1, S, T]: 0 where the key is not padding


def fused_shared(b: GraphBuilder, cos_half: str, sin_half: str, key_mask: str) -> FusedShared:
    """``cos_half``/``sin_half`` graph-float [B, S, D/2]; ``key_mask`` bool [B, 1, 1, 1, T]."""
    with b.scope("fused"):
        batch, seq = b.dim(cos_half, 0), b.dim(cos_half, 1)
        flat = b.vec(b.const([-1]), b.dim(cos_half, 2))
        cos, sin = b.reshape(cos_half, flat), b.reshape(sin_half, flat)
        rows = b.op("Range", [b.const(0), b.scalar(seq), b.const(1)])
        base = b.op("Mul", [b.op("Range", [b.const(0), b.scalar(batch), b.const(1)]), b.scalar(seq)])
        pos = b.op("Add", [b.op("Unsqueeze", [base, b.const([1])]), b.op("Unsqueeze", [rows, b.const([0])])],
                   label="rope_rows")
        t = b.dim(key_mask, 4)
        total = b.op("Cast", [b.scalar(t)], to=TensorProto.INT32, label="total_sequence_length")
        last = b.op("Cast", [b.op("Sub", [t, b.const([1])])], to=TensorProto.INT32)
        seqlens = b.op("Expand", [last, batch], label="seqlens_k")
        mask4 = b.op("Squeeze", [key_mask, b.const([1])])  # [B, 1, 1, T]
        bias = b.op("Where", [mask4, b.fconst(0.0), b.fconst(BIAS_NEG if b.dtype == "fp32" else -6.0e4)])
        bias = b.op("Expand", [bias, b.vec(batch, b.const([1]), seq, t)], label="attention_bias")
    return FusedShared(cos, sin, pos, seqlens, total, bias)


def packed_qkv_weight(q: np.ndarray, k: np.ndarray, v: np.ndarray, qb: np.ndarray | None, kb: np.ndarray | None,
                      vb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """torch-layout [out, in] weights -> one [in, q+k+v] MatMul weight (and one bias)."""
    w = np.concatenate([q, k, v], axis=0).T
    if qb is None and kb is None and vb is None:
        return w, None
    parts = [x if x is not None else np.zeros(n.shape[0], np.float32) for x, n in ((qb, q), (kb, k), (vb, v))]
    return w, np.concatenate(parts)


def project_rotate(b: GraphBuilder, x: str, w: str, bias: str | None, sizes: tuple[int, int, int],
                   heads: tuple[int, int], sh: FusedShared) -> tuple[str, str, str]:
    """One MatMul for q, k, v ([B, S, n*D] each), RoPE on q and k."""
    with b.scope("qkv_proj"):
        y = b.op("MatMul", [x, w], label="MatMul")
        if bias is not None:
            y = b.op("Add", [y, bias], label="bias")
        q, k, v = b.op("Split", [y, b.const(list(sizes))], n_out=3, axis=-1)
    with b.scope("rotary"):
        q = b.op("RotaryEmbedding", [q, sh.rope_pos, sh.cos, sh.sin], domain=MS, num_heads=heads[0], label="rope_q")
        k = b.op("RotaryEmbedding", [k, sh.rope_pos, sh.cos, sh.sin], domain=MS, num_heads=heads[1], label="rope_k")
    return q, k, v


def group_query_attention(b: GraphBuilder, q: str, k: str, v: str, past: tuple[str, str], heads: tuple[int, int],
                          sh: FusedShared) -> tuple[str, str, str]:
    """(output [B, S, Hq*D], present key, present value [B, Hkv, T, D]); q is pre-scaled."""
    inputs = [q, k, v, past[0], past[1], sh.seqlens_k, sh.total_len, "", "", "", sh.bias]
    out, pk, pv = b.op("GroupQueryAttention", inputs, n_out=3, domain=MS, num_heads=heads[0],
                       kv_num_heads=heads[1], scale=1.0, label="GroupQueryAttention")
    return out, pk, pv


def to_heads(b: GraphBuilder, x: str, heads: int, head_dim: int) -> str:
    """[B, S, n*D] -> [B, n, S, D] (the standard-op layout the hollow subgraph takes)."""
    return b.op("Transpose", [b.op("Reshape", [x, b.const([0, 0, heads, head_dim])])], perm=[0, 2, 1, 3])


def simplified_norm(b: GraphBuilder, x: str, gamma: str, eps: float) -> str:
    """RMSNorm as ``SimplifiedLayerNormalization`` (fp32 stream in, fp32 out)."""
    return b.op("SimplifiedLayerNormalization", [x, gamma], axis=-1, epsilon=eps, stash_type=1,
                label="SimplifiedLayerNormalization")


def skip_norm(b: GraphBuilder, delta: str, x: str, gamma: str, eps: float) -> tuple[str, str]:
    """(RMSNorm(x + delta), x + delta) in one ``SkipSimplifiedLayerNormalization``."""
    outs = b.op("SkipSimplifiedLayerNormalization", [delta, x, gamma], n_out=4, domain=MS, epsilon=eps,
                label="SkipSimplifiedLayerNormalization")
    return outs[0], outs[3]


def _seq_rows(b: GraphBuilder, x: str, lo: str, n: str, front: str, back: str, axis: int) -> str:
    """Rows ``lo .. lo + n`` of ``x`` along ``axis`` (scalars), zero-padded ``front``/``back`` rows."""
    lo1 = b.op("Unsqueeze", [lo, b.const([0])])
    rows = b.slice(x, lo1, b.op("Unsqueeze", [b.op("Add", [lo, n]), b.const([0])]), axis)
    rank = 4 if axis == 2 else 3
    zeros = [b.const([0] * axis), b.op("Unsqueeze", [front, b.const([0])]), b.const([0] * (rank - axis - 1)),
             b.const([0] * axis), b.op("Unsqueeze", [back, b.const([0])]), b.const([0] * (rank - axis - 1))]
    return b.op("Pad", [rows, b.op("Concat", zeros, axis=0)])


BLOCKS_PER_WINDOW = 4  # visual query blocks of ceil(W / 4) rows: each computes prefix + W + W/4 keys


def block_rows(window: int) -> tuple[int, int]:
    """(c, Lp): rows per visual query block and the keys before a block that its past holds
    (``Lp = m * c >= W``, m = :data:`BLOCKS_PER_WINDOW` or W when smaller)."""
    m = min(BLOCKS_PER_WINDOW, window)
    c = -(-window // m)
    return c, m * c


def visual_blocks_gqa(b: GraphBuilder, q: str, k_all: str, v_all: str, d: dict[str, str], window: int,
                      key_mask: str, nb: str, padq: str, heads: tuple[int, int]) -> str:
    """Hollow attention of the visual queries as one GroupQueryAttention per block (a ``Scan`` over
    blocks): block n's queries are the span rows ``n*c .. n*c + c`` (c = :func:`block_rows`); its
    past is every key before the span plus the ``Lp`` span keys before the block (zeros before the
    span's first key, masked), its new keys the block's own. Short blocks keep the computed keys per
    query near the window (``a + Lp + c`` instead of the whole causal prefix); the exact window and
    padding mask is the attention bias. ``q`` [B, S, Hq*D] pre-scaled with RoPE; ``k_all``/``v_all``
    [B, Hkv, T, D]. Returns [B, len, Hq*D]."""
    c, lp = block_rows(window)
    m = lp // c
    qb = _seq_rows(b, q, d["start"], d["len"], b.const(0), padq, 1)
    qb = b.reshape(qb, b.vec(b.const([-1, c]), b.dim(q, 2)))
    a1 = b.op("Unsqueeze", [d["abs_start"], b.const([0])])
    nb1 = b.op("Unsqueeze", [nb, b.const([0])])
    lead = [b.dim(k_all, 0), b.dim(k_all, 1)]
    news, pasts = [], []
    for x in (k_all, v_all):
        rows = _seq_rows(b, x, d["abs_start"], d["len"], b.const(lp), padq, 2)  # [B, Hkv, Lp + nb*c, D]
        blocks = b.reshape(rows, b.vec(*lead, b.op("Add", [nb1, b.const([m])]), b.const([c]), b.dim(x, 3)))
        ends = [b.op("Add", [nb1, b.const([j])]) for j in range(m + 1)]
        cur = b.op("Transpose", [b.slice(blocks, b.const([m]), ends[m], 2)], perm=[0, 2, 3, 1, 4])
        news.append(b.reshape(cur, b.vec(b.const([-1, c]), b.op("Mul", [b.dim(x, 1), b.dim(x, 3)]))))
        prev = [b.slice(blocks, b.const([j]), ends[j], 2) for j in range(m)]  # each [B, Hkv, nb, c, D]
        pre = b.op("Unsqueeze", [b.slice(x, b.const([0]), a1, 2), b.const([2])])
        pre = b.op("Expand", [pre, b.vec(*lead, nb1, a1, b.dim(x, 3))])
        past = b.op("Transpose", [b.op("Concat", [pre, *prev], axis=3)], perm=[0, 2, 1, 3, 4])
        pasts.append(b.reshape(past, b.vec(b.const([-1]), b.dim(x, 1), b.op("Add", [a1, b.const([lp])]),
                                           b.dim(x, 3))))
    total = b.op("Add", [a1, b.const([lp + c])])
    neg = BIAS_NEG if b.dtype == "fp32" else -6.0e4
    bias = b.op("Where", [_block_allowed(b, key_mask, nb, a1, window), b.fconst(0.0), b.fconst(neg)])
    bias = b.reshape(bias, b.vec(b.const([-1, 1, c]), total))  # [B*nb, 1, c, a + Lp + c]
    seqlens = b.op("Cast", [b.op("Sub", [total, b.const([1])])], to=TensorProto.INT32, label="seqlens_k")
    tl = b.op("Cast", [b.scalar(total)], to=TensorProto.INT32, label="total_sequence_length")
    out = _scan_gqa(b, [qb, news[0], news[1], pasts[0], pasts[1], bias], seqlens, tl, heads)
    flat = b.reshape(out, b.vec(b.dim(q, 0), b.const([-1]), b.dim(q, 2)))
    return b.slice(flat, b.const([0]), b.op("Unsqueeze", [d["len"], b.const([0])]), 1)


def _block_allowed(b: GraphBuilder, key_mask: str, nb: str, a1: str, window: int) -> str:
    """Bool [B, 1, 1, nb, c, a + Lp + c]: every key before the span unless padding, then local key
    l of block n (span key ``n*c - Lp + l``) iff it exists and is in query r's window:
    ``Lp + r - W < l <= Lp + r``."""
    c, lp = block_rows(window)
    r, col = np.arange(c)[:, None], np.arange(lp + c)[None, :]
    in_window = b.const((col > lp + r - window) & (col <= lp + r), np.bool_)  # [c, Lp + c]
    n = b.op("Unsqueeze", [b.op("Range", [b.const(0), nb, b.const(1)]), b.const([1])])
    exists = b.op("GreaterOrEqual", [b.const(np.arange(lp + c)[None, :]), b.op("Sub", [b.const(lp), b.op(
        "Mul", [n, b.const(c)])])], label="exists")  # [nb, Lp + c]
    local = b.op("And", [b.op("Unsqueeze", [exists, b.const([1])]), in_window], label="window_mask")
    pre = b.op("Unsqueeze", [b.slice(key_mask, b.const([0]), a1, 4), b.const([4])])  # [B, 1, 1, 1, 1, a]
    batch, nb1 = b.dim(key_mask, 0), b.op("Unsqueeze", [nb, b.const([0])])
    pre = b.op("Expand", [pre, b.vec(batch, b.const([1, 1]), nb1, b.const([c]), a1)])
    local = b.op("Expand", [b.op("Unsqueeze", [local, b.const([0, 1, 2])]),
                            b.vec(batch, b.const([1, 1]), nb1, b.const([c, lp + c]))])
    return b.op("Concat", [pre, local], axis=-1, label="allowed")


def _scan_gqa(b: GraphBuilder, blocks: list[str], seqlens: str, total: str, heads: tuple[int, int]) -> str:
    """One GroupQueryAttention per block (``Scan`` over the leading block axis: ONNX Runtime's CPU
    kernel takes a past only with batch 1); ``blocks`` = q, k, v, past k, past v, bias, each
    [B*nb, ...]. Returns [B*nb, Wb, Hq*D]."""
    name = b.node_name("Scan")
    one = [b.op("Unsqueeze", [x, b.const([1])]) for x in blocks]  # each block is a batch of one
    body_in = [f"{name}/body/in_{j}" for j in range(len(blocks))]
    out = f"{name}/body/GroupQueryAttention/output_0"
    node = helper.make_node("GroupQueryAttention", [*body_in[:5], seqlens, total, "", "", "", body_in[5]],
                            [out, f"{name}/body/present_key", f"{name}/body/present_value"],
                            name=f"{name}/body/GroupQueryAttention", domain=MS, num_heads=heads[0],
                            kv_num_heads=heads[1], scale=1.0)
    body = helper.make_graph([node], f"{name}/body",
                             [helper.make_tensor_value_info(n, b.onnx_float, None) for n in body_in],
                             [helper.make_tensor_value_info(out, b.onnx_float, None)])
    y = f"{name}/output_0"
    b.nodes.append(helper.make_node("Scan", one, [y], name=name, body=body, num_scan_inputs=len(blocks)))
    return b.op("Squeeze", [y, b.const([1])])


def _span_scalars(b: GraphBuilder, q: str, k_all: str, span: str, length: str) -> dict[str, str]:
    """Int64 scalars of the chunk: S, T, P (past), start, len, end of the span, abs_start (P + start);
    ``q`` [B, S, Hq*D], ``k_all`` [B, Hkv, T, D]."""
    d = {"S": b.scalar(b.dim(q, 1)), "T": b.scalar(b.dim(k_all, 2)), "len": length}
    d["P"] = b.op("Sub", [d["T"], d["S"]], label="past_len")
    d["start"] = b.op("Gather", [span, b.const(0)], axis=0, label="span_start")
    d["end"] = b.op("Add", [d["start"], length], label="span_end")
    d["abs_start"] = b.op("Add", [d["P"], d["start"]], label="visual_abs_start")
    return d


def _text_rows(b: GraphBuilder, q: str, kv_all: list[str], d: dict[str, str], key_mask: str,
               heads: tuple[int, int], head_dim: int) -> str:
    """Ordinary causal attention of the rows outside the span: [B, S - len, Hq*D]. Only those rows
    of ``q`` are gathered and put in head layout (not the whole chunk)."""
    from rlens.export import attention as att

    rows = b.op("Concat", [b.op("Range", [b.const(0), d["start"], b.const(1)]),
                           b.op("Range", [d["end"], d["S"], b.const(1)])], axis=0, label="text_rows")
    grouped = b.const([0, 0, heads[1], heads[0] // heads[1], head_dim])  # no -1: there may be 0 rows
    qt = b.op("Reshape", [b.op("Gather", [q, rows], axis=1, label="text_queries"), grouped])
    q5 = b.op("Transpose", [qt], perm=[0, 2, 3, 1, 4])  # [B, Hkv, G, R, D]
    k5, v5 = (b.op("Unsqueeze", [x, b.const([2])]) for x in kv_all)
    allowed = att.causal_allowed(b, b.op("Add", [rows, d["P"]], label="query_positions"), b.dim(kv_all[0], 2),
                                 key_mask)
    out = b.op("Transpose", [att.dense_attention(b, q5, k5, v5, allowed, None)], perm=[0, 3, 1, 2, 4])
    return b.op("Reshape", [out, b.const([0, 0, heads[0] * head_dim])])


def hollow_attention(b: GraphBuilder, qkv: tuple[str, str, str], past: tuple[str, str], span: str, window: int,
                     key_mask: str, heads: tuple[int, int], head_dim: int, sh: FusedShared) -> tuple[str, str, str]:
    """Hollow attention with the fused kernels: (output [B, S, Hq*D], present key, present value).
    Visual queries: block-local GroupQueryAttention (:func:`visual_blocks_gqa`); text rows: the
    standard causal subgraph; without a visual span (decode) the else branch is the unreduced
    layer's GroupQueryAttention, whose own present is the layer's (the cache is copied once)."""
    q, k, v = qkv
    length = b.op("Gather", [span, b.const(1)], axis=0, label="span_length")

    def hollow(sb: GraphBuilder) -> list[str]:
        kv_all = [sb.op("Concat", [p, to_heads(sb, x, heads[1], head_dim)], axis=2) for p, x in zip(past, (k, v))]
        d = _span_scalars(sb, q, kv_all[0], span, length)
        c = sb.const(block_rows(window)[0])
        nb = sb.op("Div", [sb.op("Add", [length, sb.op("Sub", [c, sb.const(1)])]), c], label="num_blocks")
        padq = sb.op("Sub", [sb.op("Mul", [nb, c]), length], label="tail_pad")
        with sb.scope("text"):
            text = _text_rows(sb, q, kv_all, d, key_mask, heads, head_dim)  # may have 0 rows
        with sb.scope("visual"):
            vis = visual_blocks_gqa(sb, q, kv_all[0], kv_all[1], d, window, key_mask, nb, padq, heads)
        with sb.scope("merge"):
            start1 = sb.op("Unsqueeze", [d["start"], sb.const([0])])
            before = sb.slice(text, sb.const([0]), start1, 1)
            after = sb.slice(text, start1, sb.const([2**62]), 1)
            return [sb.op("Concat", [before, vis, after], axis=1), *kv_all]

    def dense(sb: GraphBuilder) -> list[str]:
        return list(group_query_attention(sb, q, k, v, past, heads, sh))

    has_visual = b.op("Greater", [length, b.const(0)], label="has_visual")
    out, pk, pv = b.if_(has_visual, hollow, dense, [b.onnx_float] * 3, label="visual_if")
    return out, pk, pv
