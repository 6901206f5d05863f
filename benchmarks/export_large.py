"""A decoder over 2 GiB end to end: export peak memory, verification, runtime greedy == HF greedy.

The model is our own: a Qwen2-VL with a Qwen2-0.5B-like language model deepened to 28 layers
(hidden 896, FFN 4864, 14 q / 2 kv heads, vocab 151936, untied LM head; fp32 decoder ~2.2 GB,
over protobuf's 2 GiB) and a tiny vision tower, random weights, written once as a local
save_pretrained directory (fp32 safetensors, the tiny-qwen2-vl processor files). Then, one
process each (never two at once):

1. ``rlens export DIR --out BUNDLE`` under ``/usr/bin/time -v``: peak RSS over the checkpoint's
   weight bytes (target <= 1.5), wall time, the manifest's verification;
2. the runtime (``rlens.runtime.Session``, ONNX Runtime CPU) generates greedy tokens;
3. Hugging Face ``generate`` (greedy) on exactly the runtime's input ids and pixels;
4. ``rlens calibrate`` (stats ranking) in memory and with ``--max-memory cpu=1GiB`` (accelerate
   places what does not fit on disk): peak RSS of each and whether the plans agree.

    python benchmarks/export_large.py [--scratch DIR] [--layers 28] [--load-dtype auto] [--tokens 8]

Prints a table and writes benchmarks/results/export_large.json. Needs ~8 GB of free disk and
~4 GB of RAM per step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

PROMPT = "What is in the image?"


def build_checkpoint(out: Path, layers: int) -> None:
    """Write the random-weight checkpoint (skipped when ``out`` already has one)."""
    import torch
    import transformers

    from rlens.presets import get_preset, save_processor_files

    base = get_preset("tiny-qwen2-vl")
    text = dict(base.config["text_config"], hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False,
                max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})
    vision = dict(base.config["vision_config"], hidden_size=896)
    preset = replace(base, config=dict(base.config, text_config=text, vision_config=vision))
    cfg = transformers.Qwen2VLConfig(**preset.config)
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(0)
    # Hugging Face's own init (std 0.02): the presets' larger scale makes 28 random layers collapse
    # onto one repeated token, which would make the greedy comparison weak.
    model = transformers.Qwen2VLForConditionalGeneration(cfg).eval()
    model.save_pretrained(str(out))
    save_processor_files(preset, out)


def timed(*args: str) -> tuple[float, int]:
    """Run ``rlens ARGS`` under /usr/bin/time -v: (wall seconds, peak RSS bytes)."""
    rlens = Path(sys.executable).with_name("rlens")
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", str(rlens), *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"rlens {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return round(wall, 1), rss_kb * 1024


def timed_export(model_dir: Path, bundle: Path, load_dtype: str) -> dict:
    wall, rss = timed("export", str(model_dir), "--out", str(bundle), "--overwrite", "--load-dtype", load_dtype)
    return {"export_s": wall, "export_peak_rss_bytes": rss}


def timed_calibrations(model_dir: Path, scratch: Path, max_memory: str) -> dict:
    """``rlens calibrate`` (stats ranking, 2 samples) in memory and with --max-memory: peak RSS, same plan."""
    out = {}
    for tag, extra in (("in_memory", []), ("offloaded", ["--max-memory", max_memory])):
        plan = scratch / f"plan-{tag}.json"
        wall, rss = timed("calibrate", str(model_dir), "--out", str(plan), "--ranking", "stats",
                          "--max-samples", "2", *extra)
        layers = json.loads(plan.read_text())["layers"]
        digest = hashlib.sha256(json.dumps(layers, sort_keys=True).encode()).hexdigest()
        out[tag] = {"seconds": wall, "peak_rss_bytes": rss, "flags": extra, "reduced_layers": len(layers),
                    "layers_sha256": digest}
    out["same_plan"] = out["in_memory"]["layers_sha256"] == out["offloaded"]["layers_sha256"]
    return out


def runtime_tokens(bundle: Path, arrays: Path, tokens: int) -> dict:
    """(in a child process) the runtime's greedy tokens; saves its inputs for the HF run."""
    import resource

    import numpy as np

    from rlens.runtime import Session
    from rlens.export.writer import sample_image

    with Session.from_bundle(bundle) as sess:
        prompt = sess.prepare(sample_image((112, 112)), PROMPT)
        t = time.perf_counter()
        ids = [int(i) for i in sess.generate_ids(prompt, tokens)]
        secs = time.perf_counter() - t
        eos = int(sess.manifest.eos_token_id)
    pixels = {k: np.asarray(v) for k, v in prompt.pixels.processed.items() if k != "num_patches"}
    np.savez(arrays, input_ids=np.asarray(prompt.input_ids), **pixels)
    return {"ids": ids, "eos": eos, "generate_s": round(secs, 2),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def hf_tokens(model_dir: Path, arrays: Path, tokens: int, eos: int) -> dict:
    """(in a child process) Hugging Face greedy generate on the runtime's inputs."""
    import numpy as np
    import torch

    from rlens.models import load_model

    loaded = load_model(str(model_dir))
    data = dict(np.load(arrays))
    ids = data.pop("input_ids")
    inputs = {"input_ids": ids, **loaded.family.extra_text_inputs(ids, loaded.config), **data}
    inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    with torch.no_grad():
        out = loaded.model.generate(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]),
                                    max_new_tokens=tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return {"ids": out[0, ids.shape[1]:].tolist()}


def _child(step: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--step", step, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch", default="/work/scratch/rlens-large", help="folder for the checkpoint and bundle")
    ap.add_argument("--layers", type=int, default=28, help="decoder layers (default 28)")
    ap.add_argument("--load-dtype", default="auto", help="rlens export --load-dtype (default auto)")
    ap.add_argument("--tokens", type=int, default=8, help="greedy tokens to compare (default 8)")
    ap.add_argument("--calibrate-max-memory", default="cpu=1GiB", metavar="DEV=SIZE",
                    help="also time rlens calibrate in memory and with this --max-memory ('' to skip)")
    ap.add_argument("--json", default="benchmarks/results/export_large.json", help="where to write the JSON")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.step:
        fn = {"build": lambda a: build_checkpoint(Path(a[0]), int(a[1])) or {},
              "runtime": lambda a: runtime_tokens(Path(a[0]), Path(a[1]), int(a[2])),
              "hf": lambda a: hf_tokens(Path(a[0]), Path(a[1]), int(a[2]), int(a[3]))}[args.step]
        print(json.dumps(fn(rest)))
        return 0
    scratch = Path(args.scratch)
    model_dir, bundle, arrays = scratch / f"qwen2-vl-{args.layers}l", scratch / "bundle", scratch / "inputs.npz"
    if not (model_dir / "config.json").is_file():
        _child("build", str(model_dir), str(args.layers))
    ckpt = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    row = {"layers": args.layers, "load_dtype": args.load_dtype, "checkpoint_bytes": ckpt,
           **timed_export(model_dir, bundle, args.load_dtype)}
    manifest = json.loads((bundle / "manifest.json").read_text())
    row["decoder_bytes"] = sum((bundle / f).stat().st_size for f in manifest["graphs"]["decoder"]["files"])
    row["decoder_files"] = manifest["graphs"]["decoder"]["files"]
    row["verification"] = manifest["verification"]
    row["peak_over_checkpoint"] = round(row["export_peak_rss_bytes"] / ckpt, 3)
    rt = _child("runtime", str(bundle), str(arrays), str(args.tokens))
    hf = _child("hf", str(model_dir), str(arrays), str(args.tokens), str(rt["eos"]))
    row.update(runtime_ids=rt["ids"], hf_ids=_until_eos(hf["ids"], rt["eos"]), runtime_generate_s=rt["generate_s"],
               runtime_peak_rss_bytes=rt["peak_rss_bytes"])
    row["greedy_equal"] = row["runtime_ids"] == row["hf_ids"]
    row["distinct_tokens"] = len(set(row["runtime_ids"]))
    if args.calibrate_max_memory:
        row["calibrate"] = timed_calibrations(model_dir, scratch, args.calibrate_max_memory)
    gb = 1e9
    print(f"{'checkpoint GB':>13} {'decoder GB':>10} {'export s':>8} {'peak RSS GB':>11} {'peak/ckpt':>9} "
          f"{'decoder max|diff|':>17} {'greedy == HF':>12}")
    print(f"{ckpt / gb:>13.2f} {row['decoder_bytes'] / gb:>10.2f} {row['export_s']:>8} "
          f"{row['export_peak_rss_bytes'] / gb:>11.2f} {row['peak_over_checkpoint']:>9} "
          f"{row['verification']['max_abs_diff']['decoder']:>17.2e} {str(row['greedy_equal']):>12}")
    print(f"runtime {row['runtime_ids']}\nHF      {row['hf_ids']}")
    for tag in ("in_memory", "offloaded"):
        if "calibrate" in row:
            c = row["calibrate"][tag]
            print(f"calibrate {tag:<9} {' '.join(c['flags']):<20} {c['seconds']:>7} s  peak RSS "
                  f"{c['peak_rss_bytes'] / gb:.2f} GB ({c['peak_rss_bytes'] / ckpt:.2f} x checkpoint)")
    if "calibrate" in row:
        print(f"calibrate: same plan in memory and offloaded: {row['calibrate']['same_plan']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0 if row["greedy_equal"] and row.get("calibrate", {}).get("same_plan", True) else 1


if __name__ == "__main__":
    sys.exit(main())
