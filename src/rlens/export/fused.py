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
from onnx import TensorProto

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
