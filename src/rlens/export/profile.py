"""Attention work of an ONNX graph as ONNX Runtime really runs it (node shapes from its profile).

Used by ``benchmarks/export_attention_flops.py`` and the test that hollow layers skip work
(DESIGN §5.1: cost per visual query O(W + text before the span)).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def attention_matmul_flops(model: Any, feeds: dict[str, np.ndarray]) -> int:
    """Sum of 2*M*N*K over the attention core MatMuls, from the ORT profile of one run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    total = 0
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or "MatMul" not in args.get("op_name", ""):
            continue
        name = e["name"]
        if "/attn/" not in name or "_proj" in name or not name.endswith("_kernel_time"):
            continue
        a = list(args["input_type_shape"][0].values())[0]
        out = list(args["output_type_shape"][0].values())[0]
        total += 2 * int(np.prod(out)) * int(a[-1])
    return total
