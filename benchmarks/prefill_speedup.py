"""Prefill speed-up of a reduced bundle on ONNX Runtime CPU fp32, against the unreduced bundle.

Model: the Qwen2-0.5B-shaped random Qwen2-VL of ``export_walltime.py`` (24 layers, hidden 896,
FFN 4864, 14 q / 2 kv heads, vocab 151936, M-RoPE [8, 12, 12], tiny vision tower). Bundles:
unreduced; reduced (12 of 24 layers: hollow attention W = 256, FFN keep rho = 0.2) with static
FFN; the same with dynamic FFN; FastV alone (K = 2, R = 0.5); RedundancyLens (static FFN, layers
taken in ranking order) + FastV (K = 2, R = 0.5) at a prefill FLOPs budget of 0.5. Exported with verification off (speed; the export tests verify
the same code on the tiny presets). Decoder inputs are synthetic: 1024 visual + 64 text tokens.

Prints analytic FLOPs ratio, measured prefill ratio, decode-time ratio, weight-memory ratio
(decoder file bytes) and resident decoder memory ratio (reduced / full, A/B alternated in one
process, median of pairs), the unreduced PyTorch eager
prefill as a second baseline, and writes JSON to benchmarks/results/prefill_speedup.json.

    python benchmarks/prefill_speedup.py [--repeat 5] [--json PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = {"prefill_over_flops": 1.10, "decode_time": 1.03, "weights": 1.02, "resident_weights": 1.02}


def reduced_plan(loaded, proportion: float = 0.5):
    """(plan, how the layers were chosen): calibration ranking if available, else the last 12."""
    from export_walltime import synthetic_plan

    try:
        from rlens.calibrate import CalibrationConfig, plan_from_model
    except ImportError as e:
        return synthetic_plan(loaded.info()), f"last 12 layers (rlens.calibrate not importable: {e})"
    try:
        cfg = CalibrationConfig(ranking="fast", proportion=proportion, window=256, ffn_keep=0.2, ffn_mode="static",
                                max_samples=2, progress=False)
        plan, _ = plan_from_model(loaded, cfg)
        layers = [lp.index for lp in plan.layers]
        return plan, f"calibration ranking ({cfg.ranking}, {cfg.max_samples} built-in samples): layers {layers}"
    except Exception as e:  # calibration is another stage; the benchmark falls back and says so
        return synthetic_plan(loaded.info()), f"last 12 layers (calibration failed: {type(e).__name__}: {e})"


def fastv_plans(loaded, visual: int, text: int) -> tuple:
    """FastV alone (K=2, R=0.5) and RedundancyLens + FastV at a FLOPs budget of 0.5."""
    from rlens.calibrate import with_token_pruning
    from rlens.flops import Sizes, TokenLayout
    from rlens.plan import TokenPruning, empty_plan

    sizes = Sizes.from_family_sizes(loaded.family.sizes(loaded.config))
    layout = TokenLayout(visual=visual, text_after=text - text // 4, text_before=text // 4)
    fastv = TokenPruning("fastv", 2, 0.5)
    alone = with_token_pruning(empty_plan(loaded.info()), fastv, sizes, layout)
    everything, _ = reduced_plan(loaded, proportion=1.0)
    combined = with_token_pruning(everything, fastv, sizes, layout, budget=0.5)
    return alone, combined


def eager_prefill_s(loaded, visual: int, text: int, repeat: int) -> float:
    """Unreduced PyTorch eager prefill (language model + last-position head) on the same layout."""
    import torch

    from rlens.runtime.positions import prefill_positions, square_grid

    fam, model = loaded.family, loaded.model
    lm = fam.language_model(model)
    seq = visual + text
    span = (text // 4, visual)
    pos = torch.from_numpy(prefill_positions(seq, span, (1, *square_grid(visual)), True))
    x = torch.randn(1, seq, fam.sizes(model.config)["hidden_size"], generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        for i in range(repeat + 1):
            t = time.perf_counter()
            out = lm(inputs_embeds=x, position_ids=pos, use_cache=True)
            fam.lm_head(model)(out.last_hidden_state[:, -1:])
            if i:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def export_bundles(loaded, plans: dict, tmp: Path) -> dict[str, Path]:
    from rlens.export import ExportConfig, bundle_from_plan

    out = {}
    for name, (p, mode) in plans.items():
        if (tmp / name / "manifest.json").is_file():  # --keep DIR of an earlier run: reuse
            out[name] = tmp / name
            print(f"reusing {out[name]}", file=sys.stderr)
            continue
        t = time.perf_counter()
        out[name] = bundle_from_plan(loaded, p, tmp / name, ExportConfig(verify=False, ffn_mode=mode))
        print(f"exported {name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="A/B pairs per comparison (default 5)")
    ap.add_argument("--visual-tokens", type=int, default=1024)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--json", default="benchmarks/results/prefill_speedup.json")
    ap.add_argument("--keep", metavar="DIR", help="export the bundles here and keep them; reuse those already there (default: temporary)")
    args = ap.parse_args()
    import torch
    from export_walltime import build_loaded

    from rlens.runtime.bench import BenchConfig, bench

    torch.set_num_threads(torch.get_num_threads())
    loaded = build_loaded()
    from rlens.plan import empty_plan

    plan, chosen = reduced_plan(loaded)
    print(f"reduced layers: {chosen}", file=sys.stderr)
    cfg = BenchConfig(visual_tokens=args.visual_tokens, text_tokens=args.text_tokens, repeat=args.repeat)
    fastv, combined = fastv_plans(loaded, cfg.visual_tokens, cfg.text_tokens)
    plans = {"full": (empty_plan(loaded.info()), None), "reduced-static": (plan, "static"),
             "reduced-dynamic": (plan, "dynamic"), "fastv": (fastv, None), "rl+fastv": (combined, "static")}
    chosen += f"; rl+fastv: {combined.summary()}"
    eager = eager_prefill_s(loaded, cfg.visual_tokens, cfg.text_tokens, min(3, args.repeat))
    with tempfile.TemporaryDirectory() as tmp:
        bundles = export_bundles(loaded, plans, Path(args.keep or tmp))
        del loaded
        results = {name: bench(bundles[name], bundles["full"], cfg, providers=("cpu",))
                   for name in plans if name != "full"}
    report = {"model": "qwen2-0.5b-shaped Qwen2-VL (random weights)", "layers_chosen": chosen,
              "export": "verification off (speed)", "provider": "ONNX Runtime CPUExecutionProvider fp32",
              "layout": results["reduced-static"]["layout"], "note": results["reduced-static"]["note"],
              "targets": TARGETS, "pytorch_eager_full_prefill_s": round(eager, 4), "comparisons": results}
    print(table(report))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def table(report: dict) -> str:
    lines = [f"{report['model']}; {report['provider']}; {report['layout']}; export {report['export']}",
             f"reduced layers: {report['layers_chosen']}", report["note"], "",
             f"{'reduced / full':<16} {'FLOPs':>7} {'prefill':>8} {'pre/FLOPs':>10} {'decode':>8} {'weights':>8} {'resident':>9}"
             f" {'full prefill s':>15} {'reduced prefill s':>18}"]
    for name, r in report["comparisons"].items():
        q = r["ratios"]
        red, full = r["bundles"]
        lines.append(f"{name:<16} {q['flops']:>7.3f} {q['prefill']:>8.3f} {q['prefill_over_flops']:>10.3f} "
                     f"{q['decode_time']:>8.3f} {q['weights']:>8.3f} {q['resident_weights'] or 0:>9.3f} "
                     f"{full['prefill_s']:>15.3f} {red['prefill_s']:>18.3f}")
    full = report["comparisons"]["reduced-static"]["bundles"][1]
    lines.append(f"unreduced PyTorch eager prefill: {report['pytorch_eager_full_prefill_s']:.3f} s "
                 f"(ONNX Runtime unreduced {full['prefill_s']:.3f} s)")
    lines.append("targets (static FFN): " + ", ".join(f"{k} <= {v}" for k, v in TARGETS.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
