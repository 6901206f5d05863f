"""Cold start of rlens.imageproc against transformers' image processors, side by side.

For configs shaped like the real checkpoints' (Qwen2-VL-2B, LLaVA-1.5's CLIP 336, InternVL3 448
tiles with ``crop_to_patches``, SmolVLM 384 tiles with splitting) and one 1500x1000 image, each
side runs in a fresh Python process: import, load from the folder, first call, then the median of
five warm calls. The transformers side is ``import transformers`` + ``AutoImageProcessor`` (the PIL
backend where torchvision is absent, as here; HF_HUB_OFFLINE=1; its load imports torch where
torch is installed, as here, through transformers' auto machinery). The outputs of both sides are compared (max abs
difference, and whether they are bit-identical). Prints a table and writes JSON.

    python benchmarks/imageproc.py [--repeats 3] [--json benchmarks/results/imageproc.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CONFIGS = {
    "qwen2-vl-2b": ({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                     "merge_size": 2, "image_processor_type": "Qwen2VLImageProcessor"}, {}),
    "llava-1.5 (clip 336)": ({"crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "resample": 3,
                              "size": {"shortest_edge": 336}, "image_processor_type": "CLIPImageProcessor"}, {}),
    "internvl3 (448, crop)": ({"size": {"height": 448, "width": 448}, "max_patches": 12, "min_patches": 1,
                               "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                               "image_processor_type": "GotOcr2ImageProcessor"}, {"crop_to_patches": True}),
    "smolvlm (384, split)": ({"do_image_splitting": True, "max_image_size": {"longest_edge": 384}, "resample": 1,
                              "size": {"longest_edge": 1536}, "image_processor_type": "Idefics3ImageProcessor"}, {}),
}

CHILD = textwrap.dedent("""
    import json, sys, time, statistics
    t0 = time.perf_counter()
    import numpy as np
    from PIL import Image
    side, folder, kwargs, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    t_base = time.perf_counter()
    if side == "rlens":
        import rlens.imageproc as ip
        t1 = time.perf_counter()
        proc = ip.load_image_processor(folder)
    else:
        import transformers
        t1 = time.perf_counter()
        proc = transformers.AutoImageProcessor.from_pretrained(folder)
    t2 = time.perf_counter()
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(1000, 1500, 3) * 255).astype("uint8"))
    t3 = time.perf_counter()
    res = {k: np.asarray(v) for k, v in proc(images=[image], return_tensors="np", **kwargs).items()}
    t4 = time.perf_counter()
    warm = []
    for _ in range(5):
        s = time.perf_counter(); proc(images=[image], return_tensors="np", **kwargs); warm.append(time.perf_counter() - s)
    np.savez(out, **res)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "torchvision"})
    print(json.dumps({"import_s": t1 - t_base, "load_s": t2 - t1, "first_call_s": t4 - t3,
                      "warm_call_s": statistics.median(warm), "heavy_modules": heavy,
                      "processor": type(proc).__name__}))
""")


def run_side(side: str, folder: Path, kwargs: dict, out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    res = subprocess.run([sys.executable, "-c", CHILD, side, str(folder), json.dumps(kwargs), str(out)],
                         capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{side} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path) -> dict:
    import numpy as np

    x, y = np.load(a), np.load(b)
    same_keys = sorted(x.files) == sorted(y.files)
    diffs = {k: float(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)).max())
             for k in x.files if k in y.files and x[k].shape == y[k].shape}
    identical = same_keys and all(x[k].shape == y[k].shape and x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k])
                                  for k in x.files)
    return {"max_abs_diff": diffs, "bit_identical": bool(identical),
            "shapes": {k: list(x[k].shape) for k in x.files}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per side and config (median reported)")
    ap.add_argument("--json", default="benchmarks/results/imageproc.json", help="where to write the JSON")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cfg, kwargs) in CONFIGS.items():
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
            row = {"config": name, "call_kwargs": kwargs}
            for side in ("rlens", "transformers"):
                runs = [run_side(side, folder, kwargs, Path(tmp) / f"{side}.npz") for _ in range(args.repeats)]
                row[side] = {k: statistics.median(r[k] for r in runs)
                             for k in ("import_s", "load_s", "first_call_s", "warm_call_s")}
                row[side].update(heavy_modules=runs[0]["heavy_modules"], processor=runs[0]["processor"])
            row.update(compare(Path(tmp) / "rlens.npz", Path(tmp) / "transformers.npz"))
            rows.append(row)
    print(f"{'config':24} {'side':13} {'import':>8} {'load':>8} {'1st call':>9} {'warm':>8}  "
          f"{'cold total':>10}  output")
    for row in rows:
        for side in ("rlens", "transformers"):
            r = row[side]
            total = r["import_s"] + r["load_s"] + r["first_call_s"]
            note = ("bit-identical" if row["bit_identical"] else f"max diff {row['max_abs_diff']}") \
                if side == "rlens" else r["processor"]
            print(f"{row['config']:24} {side:13} {r['import_s']:8.3f} {r['load_s']:8.3f} {r['first_call_s']:9.3f} "
                  f"{r['warm_call_s']:8.3f}  {total:10.3f}  {note}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "repeats": args.repeats, "image": [1500, 1000]},
                                          indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
