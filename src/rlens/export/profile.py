"""Attention work of an ONNX graph as ONNX Runtime really runs it (node shapes from its profile).

Used by ``benchmarks/export_attention_flops.py`` and the tests that hollow layers skip work
(DESIGN §5.1: cost per visual query O(W + text before the span)), in the standard graph
(:func:`attention_matmul_flops`) and in the fused ``--ops ort`` graph (:func:`gqa_flops`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _kernel_events(model: Any, feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The node events of one ONNX Runtime run with profiling (subgraph nodes included)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def _shape(arg: dict[str, Any]) -> list[int]:
    return [int(x) for x in list(arg.values())[0]]


def gqa_flops(model: Any, feeds: dict[str, np.ndarray]) -> int:
    """Attention FLOPs of the ``GroupQueryAttention`` kernels of one run: ONNX Runtime's CPU kernel
    computes the full [S, past + S] score and value GEMMs per query head (4*B*Hq*S*T*D), plus the
    attention MatMuls of the standard subgraphs (:func:`attention_matmul_flops`)."""
    events = _kernel_events(model, feeds)
    total = _matmul_flops(events)
    for e in events:
        if e["args"].get("op_name") != "GroupQueryAttention":
            continue
        shapes = e["args"]["input_type_shape"]
        (batch, s, width), past = _shape(shapes[0]), _shape(shapes[3])
        total += 4 * batch * s * (past[2] + s) * width
    return total


def attention_matmul_flops(model: Any, feeds: dict[str, np.ndarray]) -> int:
    """Sum of 2*M*N*K over the attention core MatMuls, from the ORT profile of one run."""
    return _matmul_flops(_kernel_events(model, feeds))


def _matmul_flops(events: list[dict[str, Any]]) -> int:
    total = 0
    for e in events:
        args = e.get("args", {})
        name = e["name"]
        if "MatMul" not in args.get("op_name", "") or "/attn/" not in name or "_proj" in name:
            continue
        a = list(args["input_type_shape"][0].values())[0]
        out = list(args["output_type_shape"][0].values())[0]
        total += 2 * int(np.prod(out)) * int(a[-1])
    return total
