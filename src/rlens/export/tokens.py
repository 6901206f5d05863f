"""Token pruning in decoder.onnx (FastV, VTW; docs/token_pruning.md, docs/bundle.md).

- FastV score (layer K-1 only): the last query row's softmax over all keys, head-averaged —
  ``q[:, :, -1:] k^T``, one row: no S x S matrix beyond what the layer computes anyway.
- Kept rows (before layer K): text rows, and for FastV the TopK visual rows by that score
  (ties: lower index, ONNX TopK's rule), re-sorted ascending; ``N_v - floor(R N_v)`` of them.
- Layers K.. run on the gathered rows with gathered cos/sin (original positions) and a key mask
  made of the last ``P'`` past columns of ``attention_mask`` (P' = their own past length) and
  the kept chunk columns. Their KV caches hold only kept tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto

from rlens.export import attention as att
from rlens.export.graph import GraphBuilder
from rlens.plan import TokenPruning

PAST_DIM = "past_sequence_pruned"
TOTAL_DIM = "total_sequence_pruned"


def last_query_scores(b: GraphBuilder, q: str, k_all: str, scale: str | None, key_mask: str) -> str:
    """Head-averaged last-row attention probabilities [B, T] (fp32); ``scale`` None: q is pre-scaled."""
    with b.scope("fastv_score"):
        q_last = b.slice(q, b.const([-1]), b.const([2**62]), 2)
        q5 = att.group_queries(b, q_last, k_all)
        k5 = b.op("Unsqueeze", [k_all, b.const([2])])
        s = b.op("MatMul", [q5, att._t(b, k5, 5)], label="qk_last")
        if scale is not None:
            s = b.op("Mul", [s, scale], label="scale")
        probs = att.masked_softmax(b, s, key_mask)  # [B,Hkv,G,1,T]
        if b.dtype == "fp16":
            probs = b.op("Cast", [probs], to=TensorProto.FLOAT)
        flat = b.reshape(probs, b.vec(b.dim(probs, 0), b.const([-1]), b.dim(probs, 4)))  # [B,Hq,T]
        return b.op("ReduceMean", [flat, b.const([1])], keepdims=0, label="head_mean")


def _kept_count(b: GraphBuilder, length: str, tp: TokenPruning) -> str:
    """Scalar int64 ``N_v - floor(R N_v + 1e-9)`` (0 when every visual token goes)."""
    if tp.ratio >= 1.0:
        return b.const(0)
    n = b.op("Cast", [length], to=TensorProto.DOUBLE)
    dropped = b.op("Floor", [b.op("Add", [b.op("Mul", [n, b.const(tp.ratio, np.float64)]),
                                         b.const(1e-9, np.float64)])])
    dropped = b.op("Min", [b.op("Cast", [dropped], to=TensorProto.INT64), length])
    return b.op("Sub", [length, dropped], label="kept")


def kept_rows(b: GraphBuilder, tp: TokenPruning, scores: str | None, past: str) -> tuple[str, str, str]:
    """(rows [B, S'] int64, span start [1], kept count [1]) of the chunk for layers K.."""
    with b.scope("token_pruning"):
        start = b.op("Gather", ["visual_span", b.const(0)], axis=0, label="span_start")
        length = b.op("Gather", ["visual_span", b.const(1)], axis=0, label="span_length")
        end = b.op("Add", [start, length])
        seq = b.scalar(b.dim("inputs_embeds", 1))
        batch = b.dim("inputs_embeds", 0)
        kept = _kept_count(b, length, tp)
        before = b.op("Range", [b.const(0), start, b.const(1)])
        after = b.op("Range", [end, seq, b.const(1)])
        parts = [b.op("Expand", [b.op("Unsqueeze", [before, b.const([0])]),
                                 b.vec(batch, b.op("Unsqueeze", [start, b.const([0])]))])]
        if scores is not None:
            lo = b.op("Unsqueeze", [b.op("Add", [past, start]), b.const([0])])
            hi = b.op("Unsqueeze", [b.op("Add", [b.op("Add", [past, start]), length]), b.const([0])])
            vis = b.slice(scores, lo, hi, 1)  # [B, N_v]
            k1 = b.op("Unsqueeze", [kept, b.const([0])])
            _, top = b.op("TopK", [vis, k1], n_out=2, axis=-1, largest=1, sorted=1, label="rank")
            ordered, _ = b.op("TopK", [b.op("Cast", [top], to=TensorProto.FLOAT), k1], n_out=2, axis=-1,
                              largest=0, sorted=1, label="original_order")
            parts.append(b.op("Add", [b.op("Cast", [ordered], to=TensorProto.INT64), start]))
        n_after = b.op("Unsqueeze", [b.op("Sub", [seq, end]), b.const([0])])
        parts.append(b.op("Expand", [b.op("Unsqueeze", [after, b.const([0])]), b.vec(batch, n_after)]))
        rows = b.op("Concat", parts, axis=1, label="rows")
        return rows, b.op("Unsqueeze", [start, b.const([0])]), b.op("Unsqueeze", [kept, b.const([0])])


def gather_rows(b: GraphBuilder, x: str, rows: str, axis: int) -> str:
    """GatherElements of ``x`` along ``axis`` (hidden [B,S,H]: 1; cos/sin [B,1,S,D]: 2) with
    rows [B, S'] broadcast over the other axes."""
    idx = b.op("Unsqueeze", [rows, b.const({1: [2], 2: [1, 3]}[axis])])
    shape = b.op("Shape", [x])
    target = b.op("Concat", [b.slice(shape, b.const([0]), b.const([axis]), 0), b.dim(rows, 1),
                             b.slice(shape, b.const([axis + 1]), b.const([2**62]), 0)], axis=0)
    return b.op("GatherElements", [x, b.op("Expand", [idx, target])], axis=axis)


def pruned_mask(b: GraphBuilder, rows: str, own_past: str) -> str:
    """int64 [B, P'+S']: the last P' past columns of ``attention_mask``, then the kept chunk columns."""
    t = b.dim("attention_mask", 1)
    s = b.dim("inputs_embeds", 1)
    p = b.op("Sub", [t, s], label="full_past")
    past_cols = b.slice("attention_mask", b.op("Sub", [p, own_past]), p, 1)
    chunk = b.slice("attention_mask", p, b.const([2**62]), 1)
    return b.op("Concat", [past_cols, b.op("GatherElements", [chunk, rows], axis=1)], axis=1, label="pruned_mask")


def manifest_entry(tp: TokenPruning, num_layers: int) -> dict[str, Any]:
    """The manifest's description of the pruned layers' KV lengths (docs/bundle.md)."""
    pruned = list(range(tp.layer, num_layers))
    return {**tp.to_json(), "pruned_layers": pruned, "score_layer": tp.score_layer,
            "past_dim": PAST_DIM, "present_dim": TOTAL_DIM,
            "kept_rule": "0" if tp.ratio >= 1.0 else "N_v - floor(ratio * N_v)",
            "kv_rule": (f"layers {pruned[0]}..{num_layers - 1}: present length = own past + S - dropped, "
                        f"dropped = visual_span length - kept; feed each layer's present back as its own past. "
                        f"attention_mask stays full length (full past + S): the graph takes the last own-past "
                        f"columns of its past part for the pruned layers") if pruned else "nothing pruned"}
