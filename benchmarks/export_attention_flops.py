"""Attention MatMul FLOPs of decoder.onnx, measured from ONNX Runtime's profile (node shapes).

    PYTHONPATH=src python benchmarks/export_attention_flops.py [--visual 512] [--window 32]

Prints, for one prefill with a long visual span, the FLOPs of every MatMul under ``/attn/``
(excluding the q/k/v/o projections) for a hollow-everywhere plan vs the unreduced decoder.
"""

from __future__ import annotations

import argparse
import json

from rlens.export.profile import attention_matmul_flops


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
