"""Calibration cost: fast vs greedy ranking on a Qwen2-0.5B-shaped random model.

Runs the language model alone on random input embeddings with a fixed visual span (a 0.5B vision
tower is not what is measured), through the same code as ``rlens calibrate``. Prints a table and
writes JSON: wall time of each ranking, the layer evaluations each ran, greedy's cost against
naive greedy (L(L+1)/2 candidate evaluations x L layers, also run, side by side) and against
greedy without checkpoints, Kendall tau between the fast and greedy orders, and the divergence
each reaches at proportion 0.5.

    PYTHONPATH=src python benchmarks/calibration.py                 # the full shape (GPU advised)
    PYTHONPATH=src python benchmarks/calibration.py --samples 2 --visual-tokens 256 \
        --text-tokens 32 --window 64   # a CPU-sized run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from rlens.calibrate import CalibrationConfig, Encoded, plan_from_encoded  # noqa: E402
from rlens.calibrate.api import PlanBuilder, static_ffn_indices  # noqa: E402
from rlens.calibrate.driver import Driver  # noqa: E402
from rlens.calibrate.rankings import checkpoint_layers  # noqa: E402
from rlens.families import family_for_config  # noqa: E402
from rlens.models import model_info  # noqa: E402


def build_model(args: argparse.Namespace):
    import transformers

    half = args.hidden // 14 // 2  # rotary half-width; M-RoPE splits it t/h/w as Qwen2-VL (16, 24, 24 of 64)
    t = half // 4
    section = [t, (half - t) // 2, half - t - (half - t) // 2]
    text = dict(hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
                num_attention_heads=14, num_key_value_heads=2, vocab_size=args.vocab, hidden_act="silu",
                max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section})
    vision = dict(depth=1, embed_dim=32, hidden_size=args.hidden, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)
    cfg = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=151655,
                                     video_token_id=151656, tie_word_embeddings=True)
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = transformers.Qwen2VLForConditionalGeneration(cfg)
        for name, p in model.named_parameters():  # as the tiny presets: layers that matter
            if p.dim() >= 2 and "embed" not in name:
                p.data.normal_(0.0, 0.8 / p.shape[-1] ** 0.5)
    return model.eval()


def samples(args: argparse.Namespace) -> list[Encoded]:
    """Random embeddings: ``text_before`` text, a visual span, then text; visual rows drawn from
    another distribution than text rows, as projected image features are."""
    g = torch.Generator().manual_seed(args.seed + 1)
    before = 16
    after = args.text_tokens - before
    out = []
    for i in range(args.samples):
        text = torch.randn(1, before + after, args.hidden, generator=g)
        offset = torch.randn(args.hidden, generator=g)
        visual = 2.0 * torch.randn(1, args.visual_tokens, args.hidden, generator=g) + offset
        x = torch.cat([text[:, :before], visual, text[:, before:]], dim=1).to(args.device)
        n = x.shape[1]
        span = (before, args.visual_tokens)
        out.append(Encoded({"inputs_embeds": x}, span, tuple(range(before + args.visual_tokens, n)), n,
                           entry="language_model", source=f"random:{i}"))
    return out


#: (row, ranking, greedy_rounds, checkpoints): greedy runs with the default checkpoint budget and
#: without checkpoints (candidates resume from their own layer only), side by side.
RUNS = (("fast", "fast", None, True), ("greedy", "greedy", None, True),
        ("greedy_no_ckpt", "greedy", None, False), ("greedy_plan", "greedy", "plan", True))


def kendall_tau(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Kendall's tau between two orders of the same items (no ties)."""
    pa, pb = {v: i for i, v in enumerate(a)}, {v: i for i, v in enumerate(b)}
    items = list(a)
    c = d = 0
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            s = (pa[items[i]] - pa[items[j]]) * (pb[items[i]] - pb[items[j]])
            c, d = c + (s > 0), d + (s < 0)
    return (c - d) / max(c + d, 1)


def naive_greedy(model, fam, info, enc, args: argparse.Namespace) -> dict:
    """Greedy with every candidate run from layer 0 (no caching at all): the baseline that greedy's
    cost is measured against, run side by side. Same candidates, same tie-break (lower index)."""
    driver = Driver(model, fam, progress=False)
    driver.capture(enc, args.samples)
    builder = PlanBuilder(info, CalibrationConfig(window=args.window))
    builder.static_indices = static_ffn_indices(driver, builder.keep)
    make = builder.candidates("both")
    L = args.layers
    committed: list[int] = []
    steps: list[float] = []
    t0 = time.perf_counter()
    for _ in tqdm(range(L), desc="naive greedy", unit="round", disable=args.quiet):
        d, layer = min((driver.divergence(make([*committed, i]), start=0), i) for i in range(L) if i not in committed)
        committed.append(layer)
        steps.append(d)
    seconds = time.perf_counter() - t0
    return {"ranking_s": round(seconds, 2), "layer_evaluations": driver.layer_evals,
            "full_pass_equivalents": round(driver.layer_evals / L, 2), "order": committed, "steps": steps}


def run(args: argparse.Namespace) -> dict:
    model = build_model(args)
    fam = family_for_config(model.config)
    info = model_info(model, fam)
    enc = samples(args)
    L = args.layers
    rows = {}
    for key, method, rounds, ckpt in RUNS:
        cfg = CalibrationConfig(ranking=method, proportion=0.5, window=args.window, batch_size=args.samples,
                                progress=not args.quiet, greedy_rounds=rounds,
                                greedy_cache_gib=args.greedy_cache if ckpt else 0.0)
        t0 = time.perf_counter()
        plan, rep = plan_from_encoded(model, fam, info, enc, cfg, origin="random embeddings")
        wall = time.perf_counter() - t0
        r = rep.rankings["both"]
        rows[key] = {
            "wall_s": round(wall, 2), "capture_s": round(rep.capture_seconds, 2),
            "ranking_s": round(r.seconds, 2),
            "layer_evaluations": r.layer_evals, "full_pass_equivalents": round(r.layer_evals / L, 2),
            "divergence_at_0.5": rep.plan_divergence, "order": list(r.order), "steps": list(r.steps),
            "flops_ratio_at_0.5": rep.flops_ratio,
        }
    rows["greedy_naive"] = naive_greedy(model, fam, info, enc, args)
    naive = L * L * (L + 1) // 2
    assert rows["greedy_naive"]["layer_evaluations"] == naive
    state = sum(e.length for e in enc) * args.hidden * 4
    kept = checkpoint_layers(L, state, args.greedy_cache * 2**30)
    return {
        "setup": {"model": "Qwen2-0.5B-shaped random Qwen2-VL language model (no vision tower: random input "
                           "embeddings with a fixed visual span)",
                  "hidden": args.hidden, "layers": L, "ffn": args.ffn, "heads": "14 query / 2 KV",
                  "vocab": args.vocab,
                  "visual_tokens": args.visual_tokens, "text_tokens": args.text_tokens,
                  "samples": args.samples,
                  "window": args.window, "greedy_cache_gib": args.greedy_cache,
                  "checkpoint_layers": sorted(kept), "checkpoint_peak_mib": round(sum(kept) * state / 2**20, 1),
                  "device": str(args.device), "threads": torch.get_num_threads(),
                  "machine": platform.machine(),
                  "torch": torch.__version__},
        **rows,
        "kendall_tau": kendall_tau(tuple(rows["fast"]["order"]), tuple(rows["greedy"]["order"])),
        "naive_greedy_layer_evaluations": naive,
        "greedy_vs_naive": rows["greedy"]["layer_evaluations"] / naive,
        "greedy_full_passes_vs_half_L_squared": rows["greedy"]["layer_evaluations"] / L / (L * L / 2),
        "greedy_no_ckpt_vs_naive": rows["greedy_no_ckpt"]["layer_evaluations"] / naive,
        "greedy_vs_no_ckpt": rows["greedy"]["layer_evaluations"] / rows["greedy_no_ckpt"]["layer_evaluations"],
        "greedy_wall_vs_no_ckpt": rows["greedy"]["ranking_s"] / rows["greedy_no_ckpt"]["ranking_s"],
        "greedy_wall_vs_naive": rows["greedy"]["ranking_s"] / rows["greedy_naive"]["ranking_s"],
        "checkpoints_same_ranking": rows["greedy"]["order"] == rows["greedy_no_ckpt"]["order"]
        and rows["greedy"]["steps"] == rows["greedy_no_ckpt"]["steps"],
        "naive_same_ranking": rows["greedy"]["order"] == rows["greedy_naive"]["order"],
        "naive_max_step_difference": max(abs(a - b) for a, b in zip(rows["greedy"]["steps"],
                                                                      rows["greedy_naive"]["steps"])),
        "greedy_plan_vs_naive": rows["greedy_plan"]["layer_evaluations"] / naive,
        "greedy_plan_same_plan": sorted(rows["greedy_plan"]["order"][:round(L / 2)])
        == sorted(rows["greedy"]["order"][:round(L / 2)]),
    }


def table(res: dict) -> str:
    s = res["setup"]
    L = s["layers"]
    lines = [f"{s['model']}", f"L={s['layers']} d={s['hidden']} m={s['ffn']} vocab={s['vocab']}, "
             f"{s['samples']} samples x ({s['visual_tokens']} visual + {s['text_tokens']} text tokens), "
             f"window {s['window']}, "
             f"{s['device']} ({s['threads']} threads)", "",
             f"{'ranking':15} {'wall s':>8} {'rank s':>8} {'layer evals':>12} {'full passes':>12} "
             f"{'KL @ p=0.5':>12}"]
    for m, *_ in RUNS:
        r = res[m]
        lines.append(f"{m:15} {r['wall_s']:8.1f} {r['ranking_s']:8.1f} {r['layer_evaluations']:12d} "
                     f"{r['full_pass_equivalents']:12.1f} {r['divergence_at_0.5']:12.4g}")
    n = res["greedy_naive"]
    lines.append(f"{'greedy_naive':15} {'':>8} {n['ranking_s']:8.1f} {n['layer_evaluations']:12d} "
                 f"{n['full_pass_equivalents']:12.1f} {'':>12}")
    lines += ["", f"Kendall tau(fast, greedy) = {res['kendall_tau']:.3f}",
              f"greedy: {res['greedy']['layer_evaluations']} layer evaluations vs "
              f"{res['naive_greedy_layer_evaluations']} "
              f"for naive greedy (L(L+1)/2 full passes, every candidate from layer 0): ratio "
              f"{res['greedy_vs_naive']:.3f}, ranking time x{res['greedy_wall_vs_naive']:.3f}; same ranking: "
              f"{res['naive_same_ranking']} (max step difference {res['naive_max_step_difference']:.2g})",
              f"greedy: "
              f"{res['greedy']['full_pass_equivalents']:.1f} full passes vs L^2/2 = {L * L / 2:g}: ratio "
              f"{res['greedy_full_passes_vs_half_L_squared']:.3f}",
              f"checkpoints ({s['greedy_cache_gib']:g} GiB budget, layers kept: {len(s['checkpoint_layers'])}, "
              f"peak {s['checkpoint_peak_mib']} MiB): layer evaluations x{res['greedy_vs_no_ckpt']:.3f}, "
              f"ranking time x{res['greedy_wall_vs_no_ckpt']:.3f} of greedy without them; same ranking: "
              f"{res['checkpoints_same_ranking']}",
              f"greedy stopped after the plan's {round(L / 2)} rounds (greedy_rounds='plan'): ratio "
              f"{res['greedy_plan_vs_naive']:.3f}, same plan as full greedy: {res['greedy_plan_same_plan']}",
              f"FLOPs ratio at p=0.5: {res['greedy']['flops_ratio_at_0.5']:.4f}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--ffn", type=int, default=4864)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--visual-tokens", type=int, default=1024)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--window", type=int, default=256, help="hollow attention window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--greedy-cache", type=float, default=4.0, metavar="GIB",
                    help="checkpoint budget of the greedy rows with checkpoints (default 4)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/calibration.json"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    res = run(args)
    print(table(res))
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
