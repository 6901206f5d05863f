"""Qwen2.5-VL vision graph: blocked windowed attention against full attention, side by side.

A Qwen2.5-VL-shaped vision tower at the released models' width (hidden 1280, 16 heads, MLP 3420,
patch 14, 112-pixel windows, 2x2 merge; random weights, a tiny language model) is exported by
rlens twice from the same weights: the real layout (windowed blocks, one full-attention block at
the end) and the same tower with every block full attention. Before the blocked window layout,
rlens' windowed blocks cost exactly what a full block costs (a [patches, patches] masked
attention), so the second graph is the previous graph's cost. Both run on ONNX Runtime (CPU, 2
threads) alternately in one process on one image at the processor's real bounds; the ratio is the
median of the per-pair ratios. Output checked against Hugging Face's ``get_image_features``.

    python benchmarks/qwen25_vision.py [--depth 2] [--size 644x504] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "qwen25_vision.json"


def build(tmp: Path, depth: int, full: list[int]) -> object:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from rlens.models import load_model

    preset = load_model("tiny-qwen2.5-vl")
    text = preset.config.text_config.to_dict()
    vision = dict(depth=depth, hidden_size=1280, intermediate_size=3420, num_heads=16,
                  out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=full)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=preset.config.image_token_id,
                           video_token_id=preset.config.video_token_id,
                           vision_start_token_id=preset.config.vision_start_token_id)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    folder = tmp / f"ckpt-{'-'.join(map(str, full))}"
    model.save_pretrained(str(folder))
    preset.save_processor(folder)
    proc = json.loads((folder / "preprocessor_config.json").read_text())
    proc["size"] = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    return load_model(str(folder))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=2, help="vision blocks (the released models have 32)")
    ap.add_argument("--size", default="644x504",
                    help="image WxH (default 644x504: 1656 patches; at 1288x1008 = 6624 patches the all-full "
                         "variant's trace and reference ran out of 24 GB here)")
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch

    from rlens.export.vision import reference_features, vision_inputs, vision_model
    from rlens.processing import Processor

    w, h = (int(x) for x in args.size.lower().split("x"))
    rng = np.random.RandomState(0)
    from PIL import Image

    image = Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        layouts = {"blocked windows (real layout)": [args.depth - 1], "all blocks full attention": list(range(args.depth))}
        sessions = {}
        for name, full in layouts.items():
            loaded = build(Path(tmp), args.depth, full)
            proc = Processor(Path(tmp) / f"ckpt-{'-'.join(map(str, full))}", loaded.family, loaded.config)
            processed = proc.prepare(image, "Describe.").vision
            feeds = vision_inputs(loaded, processed)
            t0 = time.perf_counter()
            graph = vision_model(loaded, feeds, 18)
            export_s = time.perf_counter() - t0
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            names = {i.name for i in sess.get_inputs()}
            feeds = {k: v for k, v in feeds.items() if k in names}
            with torch.no_grad():
                ref = reference_features(loaded, processed)
            got = sess.run(None, feeds)[0]
            sessions[name] = (sess, feeds)
            rows[name] = {"patches": int(feeds["pixel_values"].shape[0]), "export_s": round(export_s, 1),
                          "max_abs_diff_vs_hf": float(np.abs(got - ref).max()), "times_s": []}
            del loaded
        for _ in range(args.pairs):
            for name, (sess, feeds) in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, feeds)
                rows[name]["times_s"].append(time.perf_counter() - t0)
    a, b = rows.values()
    ratio = statistics.median(x / y for x, y in zip(a["times_s"], b["times_s"]))
    print(f"Qwen2.5-VL vision, width 1280, depth {args.depth} (last block full), image {w}x{h}, "
          f"ORT {ort.__version__} CPU, {args.threads} threads, {args.pairs} A/B pairs")
    print(f"| graph | patches | median s | max abs diff vs HF |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['patches']} | {statistics.median(r['times_s']):.2f} | {r['max_abs_diff_vs_hf']:.1e} |")
    print(f"blocked / all-full (median of pair ratios): {ratio:.3f}")
    out = {"config": vars(args) | {"json": str(args.json)}, "onnxruntime": ort.__version__, "rows": rows,
           "ratio_blocked_over_full": ratio}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
