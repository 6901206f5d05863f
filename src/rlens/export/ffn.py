"""SwiGLU FFN subgraphs: full, and Probe-Activated reduced (DESIGN §3.2) for visual rows.

Static mode stores each reduced layer's gate/up/down as two disjoint initializers, the kept
hidden units (ascending) and the rest (ascending): every row runs the kept part, text rows add
the rest (``down_kept(h_kept) + down_rest(h_rest)``), so no weight is sliced or copied and the
weights are exactly as large as unreduced. Dynamic mode scores the hidden units on probe tokens
inside the graph (probe -> score -> TopK -> Gather), under ``If(span length > 0)`` so decode
steps (no visual rows) run only the full FFN.
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


def static_split(indices: tuple[int, ...], m: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept units ascending, the other units ascending)."""
    kept = sorted(set(int(i) for i in indices))
    rest = sorted(set(range(m)) - set(kept))
    return np.asarray(kept, dtype=np.int64), np.asarray(rest, dtype=np.int64)


def add_ffn_weights(b: GraphBuilder, prefix: str, gate: np.ndarray, up: np.ndarray, down: np.ndarray,
                    units: np.ndarray | None = None, part: str = "") -> FfnWeights:
    """Store torch-layout weights (gate/up [m, H], down [H, m]), optionally only the hidden
    ``units`` (in that order) as the initializers ``{prefix}.{gate,up,down}_proj{part}.weight_t``."""
    if units is not None:
        gate, up, down = gate[units], up[units], down[:, units]
    cast = b.np_float
    return FfnWeights(b.weight(f"{prefix}.gate_proj{part}.weight_t", gate.T, cast),
                      b.weight(f"{prefix}.up_proj{part}.weight_t", up.T, cast),
                      b.weight(f"{prefix}.down_proj{part}.weight_t", down.T, cast))


def _hidden(b: GraphBuilder, x: str, gate_w: str, up_w: str) -> str:
    g = b.op("MatMul", [x, gate_w], label="gate_proj")
    act = b.op("Mul", [g, b.op("Sigmoid", [g])], label="silu")
    return b.op("Mul", [act, b.op("MatMul", [x, up_w], label="up_proj")], label="gated")


def full_ffn(b: GraphBuilder, x: str, w: FfnWeights) -> str:
    return b.op("MatMul", [_hidden(b, x, w.gate, w.up), w.down], label="down_proj")


def static_ffn(b: GraphBuilder, x: str, kept: FfnWeights, rest: FfnWeights, rows: RowMaps) -> str:
    """Static reduced FFN: the kept units on every row, plus the other units on the text rows."""
    with b.scope("kept"):
        y = full_ffn(b, x, kept)
    with b.scope("rest"):
        text = b.op("Gather", [x, rows.text], axis=1, label="text_rows")
        r = full_ffn(b, text, rest)
        r = b.op("Pad", [r, b.const([0, 0, 0, 0, 1, 0])], label="zero_row")  # row S - len: zeros
        r = b.op("Gather", [r, rows.static_src], axis=1, label="merge_rows")
    return b.op("Add", [y, r], label="text_rest")


@dataclass(frozen=True)
class RowMaps:
    """Row indices (int64, computed once per span) that split a chunk into text and visual rows
    and put them back: ``text`` [S - len] the text rows; ``static_src`` [S] for each row its text
    row, or S - len (a zero row appended) for visual rows; ``merge_src`` [S] for each row its
    place in ``Concat(text rows, visual rows)``."""

    text: str
    static_src: str
    merge_src: str


def row_maps(b: GraphBuilder, start: str, end: str, seq: str) -> RowMaps:
    """``start``/``end``/``seq`` [1]-shaped int64 (the visual span and the chunk length)."""
    with b.scope("rows"):
        s0, e0, n0 = b.scalar(start), b.scalar(end), b.scalar(seq)
        text = b.op("Concat", [b.op("Range", [b.const(0), s0, b.const(1)]),
                               b.op("Range", [e0, n0, b.const(1)])], axis=0, label="text_rows")
        j = b.op("Range", [b.const(0), n0, b.const(1)], label="rows")
        length = b.op("Sub", [e0, s0])
        n_text = b.op("Sub", [n0, length], label="num_text")
        before = b.op("Less", [j, s0])
        inside = b.op("Less", [j, e0])
        after = b.op("Sub", [j, length])
        static_src = b.op("Where", [before, j, b.op("Where", [inside, n_text, after])], label="static_src")
        visual = b.op("Add", [b.op("Sub", [j, s0]), n_text])
        merge_src = b.op("Where", [before, j, b.op("Where", [inside, visual, after])], label="merge_src")
    return RowMaps(text, static_src, merge_src)


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


def reduced_ffn(b: GraphBuilder, x: str, w: FfnWeights, rows: RowMaps, span: str, keep: int,
                probes: int) -> str:
    """Dynamic mode: full FFN on text rows, probe-selected units on the visual span rows (under
    ``If(length > 0)``); ``span`` = int64 [2] (start, length)."""
    text = b.op("Gather", [x, rows.text], axis=1, label="text_rows")
    with b.scope("text"):
        t_out = full_ffn(b, text, w)
    start = b.op("Gather", [span, b.const([0])], axis=0, label="span_start")
    length = b.op("Gather", [span, b.const([1])], axis=0, label="span_length")
    visual = b.slice(x, start, b.op("Add", [start, length]), 1)
    has_visual = b.op("Greater", [b.scalar(length), b.const(0)], label="has_visual")
    v_out = b.if_(has_visual, lambda sb: [_visual_scope(sb, visual, w, keep, probes)],
                  lambda sb: [visual], [b.onnx_float], label="visual_if")[0]
    both = b.op("Concat", [t_out, v_out], axis=1)
    return b.op("Gather", [both, rows.merge_src], axis=1, label="merge_rows")


def _visual_scope(b: GraphBuilder, x: str, w: FfnWeights, keep: int, probes: int) -> str:
    with b.scope("visual"):
        return dynamic_visual_ffn(b, x, w, keep, probes)
