"""rlens side by side with the peers an edge user would pick instead, in one process (ONNX Runtime CPU).

Model: the Qwen2-0.5B-shaped random Qwen2-VL of ``export_walltime.py`` (hidden 896, FFN 4864,
14 q / 2 kv heads, vocab 151936; ``--layers`` 24 by default). Its language model is also saved as
a text-only ``Qwen2ForCausalLM`` directory (the same weights) for the peers:

- rlens decoder.onnx: unreduced / reduced (the last half of the layers: hollow W=256, static FFN
  rho=0.2), ``--ops standard`` and ``--ops ort``, float and ``--weights int4``;
- onnxruntime-genai's builder (``python -m onnxruntime_genai.models.builder``, CPU EP, fp32 and
  int4, ``exclude_embeds`` and ``prune_lm_head`` so it does the same work: embeddings in, last
  logits out), its model.onnx run by the same onnxruntime with the same threads;
- PyTorch eager (the text model, unreduced).

Each contestant is timed against a baseline A/B alternated (one prefill over visual + text
tokens, then ``--decode-tokens`` single-token steps); a ratio is the median of per-pair ratios of
the process CPU time (``--clock cpu``, the default: all threads, ONNX Runtime's threads do not spin,
so other processes on a shared machine barely move it) or of wall time (``--clock wall``).
Also: logits parity between the graphs, weight bytes, versions. A peer that cannot be installed
or built gets a row that says why. Prints a table; JSON to benchmarks/results/peers.json.

    python benchmarks/peers.py [--layers 24] [--visual-tokens 1024] [--text-tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = {"reduced_ort / genai_fp32 prefill": 0.75, "unreduced_ort / genai_fp32 prefill": 1.05,
           "unreduced_ort_int4 / genai_int4 decode": 1.05}


# ---- models -------------------------------------------------------------------------------------
def build_loaded(layers: int):
    """The benchmark model of export_walltime.py with ``layers`` decoder layers."""
    from dataclasses import replace

    import torch
    import transformers

    from rlens.families import family_for_config
    from rlens.models import LoadedModel
    from rlens.presets import get_preset

    base = get_preset("tiny-qwen2-vl")
    text = dict(base.config["text_config"], hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]})
    vision = dict(base.config["vision_config"], hidden_size=896)
    preset = replace(base, name=f"qwen2-0.5b-shaped-{layers}l",
                     config=dict(base.config, text_config=text, vision_config=vision))
    cfg = transformers.Qwen2VLConfig(**preset.config)
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration(cfg).eval()
    return LoadedModel(model=model, family=family_for_config(cfg), source=preset.name, preset=preset)


def half_plan(info):
    """The last half of the layers reduced: hollow W=256, static FFN rho=0.2 (evenly spaced units)."""
    from rlens.plan import LayerPlan, Plan, ffn_keep_for

    m, n = info.intermediate_size, info.num_layers
    k = ffn_keep_for(0.2, m)
    idx = tuple(sorted({round(i * m / k) for i in range(k)}))
    return Plan(model=info, layers=tuple(LayerPlan(i, hollow_window=256, ffn_keep=len(idx), ffn_indices=idx)
                                         for i in range(n // 2, n)))


def save_text_model(loaded, out: Path) -> None:
    """The language model as a text-only Qwen2ForCausalLM directory with the same weights."""
    import torch
    import transformers

    t = loaded.config.text_config
    cfg = transformers.Qwen2Config(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                                   num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                                   num_key_value_heads=t.num_key_value_heads, vocab_size=t.vocab_size,
                                   max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
                                   rope_theta=1000000.0, tie_word_embeddings=False, hidden_act="silu")
    cfg.architectures = ["Qwen2ForCausalLM"]
    with torch.device("meta"):
        text = transformers.Qwen2ForCausalLM(cfg)
    lm = loaded.family.language_model(loaded.model)
    state = {f"model.{k}": v for k, v in lm.state_dict().items() if "rotary" not in k}
    state["lm_head.weight"] = loaded.family.lm_head(loaded.model).weight
    text.load_state_dict(state, assign=True, strict=False)
    text.save_pretrained(out)
    del text


def rlens_decoder(loaded, plan, ops: str, weights: str, out: Path) -> Path:
    import onnx

    from rlens.export.bundle import save_onnx
    from rlens.export.decoder import decoder_model
    from rlens.export.graph import WeightFile
    from rlens.export.quantize import quantize_decoder

    out.mkdir(parents=True, exist_ok=True)
    opset = 21 if ops == "standard" and weights != "float" else 18
    path = out / "decoder.onnx"
    with WeightFile(out / "decoder.onnx.data") as wf:  # streamed: a 24-layer decoder is ~2 GiB
        model = decoder_model(loaded, plan, "portable", "fp32", opset, wf, ops=ops)
    save_onnx(model, path, True)
    if weights != "float":
        del model
        model = onnx.load(str(path))
        path.unlink()
        (out / "decoder.onnx.data").unlink()
        model, _ = quantize_decoder(model, weights, ops)
        save_onnx(model, path, True)
    return path


def genai_model(hf_dir: Path, precision: str, out: Path) -> tuple[Path | None, str]:
    """(model.onnx, how it was built) or (None, why not)."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as e:
        return None, f"onnxruntime-genai not installed ({e}); pip install onnxruntime-genai"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
           "-p", precision, "-e", "cpu", "--extra_options", "exclude_embeds=true", "prune_lm_head=true"]
    if not (out / "model.onnx").is_file():
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not (out / "model.onnx").is_file():
            return None, f"builder failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}"
    return out / "model.onnx", " ".join(cmd[1:])


# ---- contestants --------------------------------------------------------------------------------
CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]  # set by main(): the process CPU time of all threads (robust to other load)


class Layout:
    def __init__(self, visual: int, text: int, hidden: int, decode: int) -> None:
        from rlens.runtime import positions as pm

        self.seq, self.span = visual + text, (text // 4, visual)
        rng = np.random.default_rng(0)
        self.embeds = rng.standard_normal((1, self.seq, hidden)).astype(np.float32)
        self.steps = rng.standard_normal((decode, 1, 1, hidden)).astype(np.float32)
        grid = (1, *pm.square_grid(visual)) if visual else None
        self.mrope = pm.prefill_positions(self.seq, self.span, grid, True)
        self.next = pm.next_position(self.mrope)


class OrtDecoder:
    """An ONNX decoder (rlens' or genai's): prefill, then decode steps on its KV cache."""

    def __init__(self, path: Path, lay: Layout, threads: int, rlens: bool, kv: tuple[int, int]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spinning would count as CPU time
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.lay, self.rlens = lay, rlens
        self.kv = [i.name for i in self.sess.get_inputs() if i.name.startswith("past_key_values")]
        self.kv_shape = (1, kv[0], 0, kv[1])
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []

    def feeds(self, x: np.ndarray, pos: np.ndarray, past: dict | None, span: tuple[int, int]) -> dict:
        total = x.shape[1] + (0 if past is None else next(iter(past.values())).shape[2])
        f = {"inputs_embeds": x, "attention_mask": np.ones((1, total), np.int64)}
        f.update(past or {k: np.zeros(self.kv_shape, np.float32) for k in self.kv})
        if self.rlens:
            f["position_ids"], f["visual_span"] = pos, np.asarray(span, np.int64)
        return f

    def run(self, record: bool = True) -> np.ndarray:
        from rlens.runtime import positions as pm

        lay = self.lay
        t0 = clock()
        out = self.sess.run(None, self.feeds(lay.embeds, lay.mrope, None, lay.span))
        t1 = clock()
        names = [o.name for o in self.sess.get_outputs()]
        logits = out[0][:, -1]
        for i, x in enumerate(lay.steps):
            past = {k.replace("present", "past_key_values"): v for k, v in zip(names, out) if k.startswith("present")}
            out = self.sess.run(None, self.feeds(x, pm.step_positions(lay.next + i, True), past, (0, 0)))
        t2 = clock()
        if record:
            self.prefill_s.append(t1 - t0)
            self.decode_s.append((t2 - t1) / len(lay.steps))
        return logits


class Eager:
    """The text model in PyTorch eager (1-D positions: the same work as M-RoPE for timing)."""

    def __init__(self, hf_dir: Path, lay: Layout, threads: int) -> None:
        import torch
        import transformers

        torch.set_num_threads(threads)
        self.model = transformers.Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.lay = lay
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []

    def run(self, record: bool = True) -> np.ndarray:
        import torch

        from rlens import hf_compat

        lay, m = self.lay, self.model
        with torch.no_grad():
            t0 = clock()
            out = m.model(inputs_embeds=torch.from_numpy(lay.embeds), use_cache=True)
            logits = m.lm_head(out.last_hidden_state[:, -1:])
            t1 = clock()
            cache = hf_compat.output_cache(out)
            for x in lay.steps:
                o = hf_compat.call_with_cache(m.model, cache, inputs_embeds=torch.from_numpy(x), use_cache=True)
                cache = hf_compat.output_cache(o)
                m.lm_head(o.last_hidden_state[:, -1:])
            t2 = clock()
        if record:
            self.prefill_s.append(t1 - t0)
            self.decode_s.append((t2 - t1) / len(lay.steps))
        return logits.numpy()[:, -1]


# ---- the run ------------------------------------------------------------------------------------
PAIRS = [("unreduced_standard", "genai_fp32"), ("unreduced_ort", "genai_fp32"), ("reduced_standard", "genai_fp32"),
         ("reduced_ort", "genai_fp32"), ("reduced_ort", "unreduced_ort"), ("unreduced_ort_int4", "genai_int4"),
         ("reduced_ort_int4", "genai_int4"), ("reduced_ort_int4", "unreduced_ort_int4"), ("eager", "genai_fp32")]
RLENS = {"unreduced_standard": (False, "standard", "float"), "unreduced_ort": (False, "ort", "float"),
         "reduced_standard": (True, "standard", "float"), "reduced_ort": (True, "ort", "float"),
         "unreduced_ort_int4": (False, "ort", "int4"), "reduced_ort_int4": (True, "ort", "int4")}


def build_all(args, work: Path, needed: set[str]) -> tuple[dict[str, Any], dict[str, str], tuple[int, int], dict]:
    """The ``needed`` contestants' files (rlens' standard unreduced graph always: the parity
    reference): {name: path}, {name: why it is missing}, (kv heads, head dim), plan."""
    from rlens.plan import empty_plan

    loaded = build_loaded(args.layers)
    info = loaded.info()
    sizes = loaded.family.sizes(loaded.config)
    plan = half_plan(info)
    hf = work / "hf"
    if not (hf / "config.json").is_file():
        save_text_model(loaded, hf)
    paths: dict[str, Any] = {"eager": hf}
    for name, (reduced, ops, weights) in RLENS.items():
        if name not in needed | {"unreduced_standard"}:
            continue
        folder = work / name
        if not (folder / "decoder.onnx").is_file():
            t = time.perf_counter()
            rlens_decoder(loaded, plan if reduced else empty_plan(info), ops, weights, folder)
            print(f"rlens {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
            gc.collect()
        paths[name] = folder / "decoder.onnx"
    del loaded
    gc.collect()
    missing = {}
    for precision in ("fp32", "int4"):
        if f"genai_{precision}" not in needed:
            continue
        t = time.perf_counter()
        path, how = genai_model(hf, precision, work / f"genai_{precision}")
        print(f"genai {precision}: {time.perf_counter() - t:.0f} s ({how})", file=sys.stderr)
        if path is None:
            missing[f"genai_{precision}"] = how
        else:
            paths[f"genai_{precision}"] = path
    return paths, missing, (sizes["num_kv_heads"], sizes["head_dim"]), {"summary": plan.summary()}


def contestant(name: str, paths: dict, lay: Layout, args, kv: tuple[int, int]) -> Any:
    if name == "eager":
        return Eager(paths[name], lay, args.threads)
    return OrtDecoder(paths[name], lay, args.threads, name in RLENS, kv)


def time_pair(a: str, b: str, paths: dict, lay: Layout, args, kv) -> dict[str, Any]:
    ca, cb = contestant(a, paths, lay, args, kv), contestant(b, paths, lay, args, kv)
    la, lb = ca.run(record=False), cb.run(record=False)
    for _ in range(args.repeat):
        ca.run()
        cb.run()
    pre = statistics.median(x / y for x, y in zip(ca.prefill_s, cb.prefill_s, strict=True))
    dec = statistics.median(x / y for x, y in zip(ca.decode_s, cb.decode_s, strict=True))
    row = {"a": a, "b": b, "prefill_ratio": round(pre, 4), "decode_ratio": round(dec, 4),
           "a_prefill_s": round(statistics.median(ca.prefill_s), 4), "b_prefill_s": round(statistics.median(cb.prefill_s), 4),
           "a_decode_ms": round(1e3 * statistics.median(ca.decode_s), 3),
           "b_decode_ms": round(1e3 * statistics.median(cb.decode_s), 3),
           "logits_max_abs_diff": float(np.max(np.abs(la - lb))),
           "greedy_agrees": bool(np.argmax(la[0]) == np.argmax(lb[0]))}
    print(f"{a} / {b}: prefill {pre:.3f}, decode {dec:.3f}", file=sys.stderr)
    del ca, cb
    gc.collect()
    return row


def text_parity(paths: dict, args, kv, hidden: int) -> dict[str, float]:
    """Prefill logits of a text-only prompt (1-D positions, so genai's RoPE is rlens' M-RoPE):
    max abs diff of each float graph from rlens' standard-op graph."""
    lay = Layout(0, 64, hidden, 1)
    got = {}
    for name in ("unreduced_standard", "unreduced_ort", "genai_fp32", "eager"):
        if name in paths:
            c = contestant(name, paths, lay, args, kv)
            got[name] = c.run(record=False)
            del c
            gc.collect()
    ref = got["unreduced_standard"]
    return {k: float(np.max(np.abs(v - ref))) for k, v in got.items() if k != "unreduced_standard"}


def weight_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name) or p.suffix == ".data")


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    v = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
         "transformers": transformers.__version__, "numpy": np.__version__, "python": platform.python_version()}
    try:
        import onnxruntime_genai

        v["onnxruntime-genai"] = onnxruntime_genai.__version__
    except ImportError as e:
        v["onnxruntime-genai"] = f"not installed: {e}"
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24, help="decoder layers (default 24, Qwen2-0.5B)")
    ap.add_argument("--visual-tokens", type=int, default=1024)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="A/B pairs per comparison (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for every contestant (default 2)")
    ap.add_argument("--work", metavar="DIR", help="keep the built models here and reuse them (default: temporary)")
    ap.add_argument("--pairs", help="only these comparisons, e.g. 'reduced_ort/genai_fp32,eager/genai_fp32' "
                                    "(default: all of PAIRS)")
    ap.add_argument("--json", default="benchmarks/results/peers.json")
    ap.add_argument("--clock", choices=list(CLOCK), default="cpu",
                    help="what a ratio compares: the process CPU time of all threads (default; robust to other "
                         "processes on a shared machine; ORT threads do not spin) or wall time")
    ap.add_argument("--build-only", action="store_true", help="build the chosen pairs' models into --work and exit")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]
    pairs = [tuple(p.split("/")) for p in args.pairs.split(",")] if args.pairs else PAIRS
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown:
        ap.error(f"unknown pairs {unknown}; choose from {['/'.join(p) for p in PAIRS]}")
    if args.build_only and not args.work:
        ap.error("--build-only needs --work (where the models are kept)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths, missing, kv, plan = build_all(args, work, {n for p in pairs for n in p})
        if args.build_only:
            print(f"built {sorted(paths)} in {work}; missing: {missing or 'none'}", file=sys.stderr)
            return 0
        hidden = 896
        lay = Layout(args.visual_tokens, args.text_tokens, hidden, args.decode_tokens)
        rows = []
        for a, b in pairs:
            gone = [n for n in (a, b) if n in missing]
            rows.append({"a": a, "b": b, "skipped": "; ".join(f"{n}: {missing[n]}" for n in gone)} if gone
                        else time_pair(a, b, paths, lay, args, kv))
        report = {"model": f"Qwen2-0.5B-shaped ({args.layers} layers, random weights)", "reduced_plan": plan,
                  "layout": {"visual": args.visual_tokens, "text": args.text_tokens, "decode_tokens": args.decode_tokens},
                  "threads": args.threads, "repeat": args.repeat, "clock": args.clock,
                  "versions": versions(), "missing": missing,
                  "weight_bytes": {k: weight_bytes(v) for k, v in paths.items() if k != "eager"},
                  "text_parity_vs_unreduced_standard": text_parity(paths, args, kv, hidden),
                  "pairs": rows, "targets": TARGETS}
    print(table(report))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def table(r: dict) -> str:
    lines = [f"{r['model']}; {r['layout']}; {r['threads']} threads; {r['repeat']} A/B pairs; "
             f"{r.get('clock', 'wall')} time; reduced: {r['reduced_plan']['summary']}", f"versions: {r['versions']}", "",
             f"{'A':<20} {'B':<20} {'prefill A/B':>11} {'decode A/B':>11} {'A prefill s':>12} {'B prefill s':>12}"
             f" {'A dec ms':>9} {'B dec ms':>9} {'logit diff':>11}"]
    for p in r["pairs"]:
        if "skipped" in p:
            lines.append(f"{p['a']:<20} {p['b']:<20} skipped: {p['skipped']}")
            continue
        lines.append(f"{p['a']:<20} {p['b']:<20} {p['prefill_ratio']:>11.3f} {p['decode_ratio']:>11.3f} "
                     f"{p['a_prefill_s']:>12.3f} {p['b_prefill_s']:>12.3f} {p['a_decode_ms']:>9.2f} "
                     f"{p['b_decode_ms']:>9.2f} {p['logits_max_abs_diff']:>11.2e}")
    fp32 = r["weight_bytes"].get("unreduced_standard")
    lines.append("weight bytes / rlens fp32: " + ", ".join(f"{k} {v / fp32:.3f}" for k, v in r["weight_bytes"].items()))
    lines.append("text-only prefill logits, max abs diff vs rlens standard: "
                 + ", ".join(f"{k} {v:.2e}" for k, v in r["text_parity_vs_unreduced_standard"].items()))
    lines.append("targets: " + ", ".join(f"{k} <= {v}" for k, v in TARGETS.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
