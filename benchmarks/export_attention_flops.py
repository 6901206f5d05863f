"""Attention MatMul FLOPs of decoder.onnx, measured from ONNX Runtime's profile (node shapes).

    PYTHONPATH=src python benchmarks/export_attention_flops.py [--visual 512] [--window 32]

Prints, for one prefill with a long visual span, the FLOPs of every MatMul under ``/attn/``
(excluding the q/k/v/o projections) for a hollow-everywhere plan vs the unreduced decoder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def attention_matmul_flops(model, feeds) -> int:
    """Sum of 2*M*N*K over the attention core MatMuls, from the ORT profile of one run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "prof")
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


def measure(preset: str = "tiny-llava", visual: int = 512, window: int = 32, text: int = 16) -> dict:
    from rlens.export.decoder import decoder_model, geometry
    from rlens.export.verify import sample
    from rlens.models import load_model
    from rlens.plan import LayerPlan, Plan

    lm = load_model(preset)
    info, geo = lm.info(), geometry(lm)
    span = (text, visual)
    feeds = sample(geo, 0, 1, visual + 2 * text, span).feeds
    hollow = Plan(model=info, layers=tuple(LayerPlan(i, hollow_window=window) for i in range(info.num_layers)))
    dense = attention_matmul_flops(decoder_model(lm, Plan(model=info)), feeds)
    red = attention_matmul_flops(decoder_model(lm, hollow), feeds)
    return {"preset": preset, "visual": visual, "window": window, "dense_flops": dense,
            "hollow_flops": red, "ratio": red / dense}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny-llava")
    p.add_argument("--visual", type=int, default=512)
    p.add_argument("--window", type=int, default=32)
    a = p.parse_args()
    print(json.dumps(measure(a.preset, a.visual, a.window), indent=2))
