"""Export wall time of a Qwen2-0.5B-shaped Qwen2-VL decoder (24 layers, hidden 896, FFN 4864,
14 q / 2 kv heads, vocab 151936) with a tiny vision tower and random weights.

Exports the unreduced bundle and one with a synthetic plan (the last 12 layers: hollow W=256,
static FFN keeping K = ceil(0.2 m / 16) * 16 evenly spaced units), verification on, and prints a
table (also written as JSON). The plan is synthetic: calibration is not what is timed here.

    python benchmarks/export_walltime.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def build_loaded():
    import transformers

    from rlens.families import family_for_config
    from rlens.models import LoadedModel
    from rlens.presets import get_preset

    base = get_preset("tiny-qwen2-vl")
    text = dict(base.config["text_config"], hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})
    vision = dict(base.config["vision_config"], hidden_size=896)
    preset = replace(base, name="qwen2-0.5b-shaped", config=dict(base.config, text_config=text, vision_config=vision))
    cfg = transformers.Qwen2VLConfig(**preset.config)
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration(cfg).eval()
    return LoadedModel(model=model, family=family_for_config(cfg), source=preset.name, preset=preset)


def synthetic_plan(info):
    from rlens.plan import LayerPlan, Plan, ffn_keep_for

    m = info.intermediate_size
    k = ffn_keep_for(0.2, m)
    idx = tuple(sorted({round(i * m / k) for i in range(k)}))
    layers = [LayerPlan(i, hollow_window=256, ffn_keep=len(idx), ffn_indices=idx) for i in range(12, 24)]
    return Plan(model=info, layers=tuple(layers))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/export_walltime.json", help="where to write the JSON")
    args = ap.parse_args()
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.plan import empty_plan

    t0 = time.perf_counter()
    loaded = build_loaded()
    build_s = time.perf_counter() - t0
    info = loaded.info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in (("unreduced", empty_plan(info)), ("reduced (12/24, static FFN)", synthetic_plan(info))):
            out = Path(tmp) / name.split()[0]
            t = time.perf_counter()
            bundle_from_plan(loaded, plan, out, ExportConfig())
            secs = time.perf_counter() - t
            manifest = json.loads((out / "manifest.json").read_text())
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            rows.append({"bundle": name, "export_s": round(secs, 1), "bytes": size,
                         "max_abs_diff": manifest["verification"]["max_abs_diff"]})
    print(f"model build {build_s:.1f} s; {info.num_layers} layers, hidden {info.hidden_size}, FFN {info.intermediate_size}")
    print(f"{'bundle':<30} {'export s':>9} {'MB':>9}  verification max|diff|")
    for r in rows:
        print(f"{r['bundle']:<30} {r['export_s']:>9} {r['bytes'] / 1e6:>9.1f}  {r['max_abs_diff']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "model_build_s": build_s}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
