"""SwiGLU FFN subgraphs: full, and Probe-Activated reduced (DESIGN §3.2) for visual rows.

Static mode permutes the hidden dimension at export so the kept units come first; the visual
path reads a ``Slice`` of the same initializers (no second copy). Dynamic mode scores the
hidden units on probe tokens inside the graph: probe -> score -> TopK -> Gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlens.export.graph import GraphBuilder


@dataclass(frozen=True)
class FfnWeights:
    """Initializer names, stored transposed for MatMul: gate/up [H, m], down [m, H]."""

    gate: str
    up: str
    down: str


def static_permutation(indices: tuple[int, ...], m: int) -> np.ndarray:
    """Kept units (ascending) first, then the others (ascending): text output is unchanged."""
    kept = sorted(indices)
    rest = sorted(set(range(m)) - set(kept))
    return np.asarray(kept + rest, dtype=np.int64)


def add_ffn_weights(b: GraphBuilder, prefix: str, gate: np.ndarray, up: np.ndarray, down: np.ndarray,
                    perm: np.ndarray | None = None) -> FfnWeights:
    """Store torch-layout weights (gate/up [m, H], down [H, m]), optionally permuted along m."""
    if perm is not None:
        gate, up, down = gate[perm], up[perm], down[:, perm]
    cast = b.np_float
    return FfnWeights(b.weight(f"{prefix}.gate_proj.weight_t", gate.T.astype(cast)),
                      b.weight(f"{prefix}.up_proj.weight_t", up.T.astype(cast)),
                      b.weight(f"{prefix}.down_proj.weight_t", down.T.astype(cast)))


def _hidden(b: GraphBuilder, x: str, gate_w: str, up_w: str) -> str:
    g = b.op("MatMul", [x, gate_w], label="gate_proj")
    act = b.op("Mul", [g, b.op("Sigmoid", [g])], label="silu")
    return b.op("Mul", [act, b.op("MatMul", [x, up_w], label="up_proj")], label="gated")


def full_ffn(b: GraphBuilder, x: str, w: FfnWeights) -> str:
    return b.op("MatMul", [_hidden(b, x, w.gate, w.up), w.down], label="down_proj")


def static_visual_ffn(b: GraphBuilder, x: str, w: FfnWeights, keep: int) -> str:
    """The first ``keep`` (permuted) hidden units: slices of the same initializers."""
    k = b.const([keep])
    gate = b.slice(w.gate, b.const([0]), k, 1)
    up = b.slice(w.up, b.const([0]), k, 1)
    down = b.slice(w.down, b.const([0]), k, 0)
    return b.op("MatMul", [_hidden(b, x, gate, up), down], label="down_proj")


def dynamic_visual_ffn(b: GraphBuilder, x: str, w: FfnWeights, keep: int, probes: int) -> str:
    """Score hidden units on probe tokens of this input, keep the top ``keep`` per batch row."""
    n = b.dim(x, 1)
    with b.scope("probe"):
        stride = b.op("Max", [b.op("Div", [b.op("Add", [n, b.const([probes - 1])]), b.const([probes])]),
                              b.const([1])], label="stride")
        rows = b.op("Range", [b.const(0), b.scalar(n), b.scalar(stride)], label="probe_rows")
        h = _hidden(b, b.op("Gather", [x, rows], axis=1), w.gate, w.up)  # [B, Np, m]
        count = b.op("Max", [b.op("Cast", [b.dim(h, 1)], to=1), b.const([1.0], np.float32)])
        h32 = b.cast(b.op("Abs", [h]), "fp32")
        score = b.op("Div", [b.op("ReduceSum", [h32, b.const([1])], keepdims=0), count], label="score")
    with b.scope("select"):
        _, top = b.op("TopK", [score, b.const([keep])], n_out=2, axis=-1, largest=1, sorted=1)
        _, idx = b.op("TopK", [top, b.const([keep])], n_out=2, axis=-1, largest=0, sorted=1,
                      label="ascending")
        idx = b.op("GatherElements", [top, idx], axis=-1, label="kept_units")  # [B, K]
        gate = b.op("Transpose", [b.op("Gather", [w.gate, idx], axis=1)], perm=[1, 0, 2])
        up = b.op("Transpose", [b.op("Gather", [w.up, idx], axis=1)], perm=[1, 0, 2])
        down = b.op("Gather", [w.down, idx], axis=0)  # [B, K, H]
    return b.op("MatMul", [_hidden(b, x, gate, up), down], label="down_proj")


def split_rows(b: GraphBuilder, x: str, start: str, end: str) -> tuple[str, str]:
    """x [B, S, H] -> (text rows [B, S - len, H], visual rows [B, len, H])."""
    text = b.op("Concat", [b.slice(x, b.const([0]), start, 1), b.slice(x, end, b.const([2**62]), 1)],
                axis=1, label="text_rows")
    return text, b.slice(x, start, end, 1)


def merge_rows(b: GraphBuilder, text: str, visual: str, start: str) -> str:
    before = b.slice(text, b.const([0]), start, 1)
    after = b.slice(text, start, b.const([2**62]), 1)
    return b.op("Concat", [before, visual, after], axis=1, label="merge_rows")


def reduced_ffn(b: GraphBuilder, x: str, w: FfnWeights, span1: tuple[str, str], keep: int,
                mode: str, probes: int) -> str:
    """Full FFN on text rows, reduced FFN on the visual span rows (``span1`` = [1]-shaped start, end)."""
    start, end = span1
    text, visual = split_rows(b, x, start, end)
    with b.scope("text"):
        t_out = full_ffn(b, text, w)
    with b.scope("visual"):
        if mode == "static":
            v_out = static_visual_ffn(b, visual, w, keep)
        else:
            v_out = dynamic_visual_ffn(b, visual, w, keep, probes)
    return merge_rows(b, t_out, v_out, start)
