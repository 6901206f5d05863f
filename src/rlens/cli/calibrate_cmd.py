"""``rlens calibrate MODEL --out plan.json``: rank the layers and write the plan (+ report PNG)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rlens.cli import add_model_argument


def _rounds(value: str) -> int | str:
    if value == "plan":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'plan', got {value!r}") from None


def add_calibration_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``rlens calibrate`` and ``rlens-export``."""
    p.add_argument("--data", metavar="FILE",
                   help='JSONL calibration set, lines {"image": path, "prompt": str, "answer": str (optional)}, '
                        "image paths relative to the file (default: a small built-in set of generated images)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget", type=float, metavar="F",
                   help="target prefill FLOPs ratio: the smallest proportion of reduced layers that meets it")
    g.add_argument("--proportion", type=float, metavar="P",
                   help="reduce round(P * layers) layers, most redundant first (default 0.5 when no --budget)")
    p.add_argument("--ranking", choices=("greedy", "fast", "stats"), default="greedy",
                   help="greedy: the paper's (add the least harmful layer each round, ~L^2/2 layer evaluations); "
                        "fast: each layer alone (L evaluations); stats: activation statistics (one pass)")
    p.add_argument("--ffn-keep", type=float, default=0.2, metavar="RHO",
                   help="FFN keep ratio rho: K = min(m, ceil(rho*m/16)*16) units for visual tokens (default 0.2)")
    p.add_argument("--window", type=int, default=256, metavar="W",
                   help="Hollow Attention window: visual tokens each visual query sees (default 256)")
    p.add_argument("--probes", type=int, default=64, metavar="M",
                   help="probe tokens that pick the FFN units (default 64)")
    p.add_argument("--separate", action="store_true",
                   help="rank hollow attention and the FFN reduction separately (default: together)")
    p.add_argument("--greedy-rounds", type=_rounds, default=None, metavar="N|plan",
                   help="stop greedy after N rounds, or after the rounds the plan needs ('plan'); the rest of "
                        "the order then follows the fast ranking (default: all rounds)")
    p.add_argument("--greedy-cache", type=float, default=4.0, metavar="GIB",
                   help="memory for greedy's per-candidate checkpoints (layer inputs a candidate resumes from "
                        "in the next round; on the cache device); less memory -> more layer evaluations, same "
                        "ranking; 0 turns them off (default 4)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N", help="use at most N calibration samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in set and of sampling (default 0)")
    p.add_argument("--visual-tokens", type=int, default=None, metavar="N",
                   help="visual tokens for the FLOPs budget (default: the calibration set's mean)")
    p.add_argument("--text-tokens", type=int, default=None, metavar="T",
                   help="text tokens for the FLOPs budget (default: the calibration set's mean)")
    add_pruning_flags(p)


def _fastv(value: str) -> tuple[int, float]:
    try:
        k, r = value.split(",")
        return int(k), float(r)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K,R (e.g. 2,0.5), got {value!r}") from None


def _vtw(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a layer index, got {value!r}") from None


def add_pruning_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("token pruning (docs/token_pruning.md)")
    g.add_argument("--fastv", type=_fastv, default=None, metavar="K,R",
                   help="FastV: layers K.. keep the top (1-R) visual tokens by layer K-1's last-token attention")
    g.add_argument("--vtw", type=_vtw, default=None, metavar="auto|K",
                   help="VTW: layers K.. see no visual token; auto: first layer with mean KL <= --vtw-eta")
    g.add_argument("--vtw-eta", type=float, default=0.003, metavar="ETA",
                   help="VTW auto threshold on KL(P_withdrawn || P_full) of the last token (default 0.003)")
    g.add_argument("--vtw-min-layer", type=int, default=5, metavar="K",
                   help="VTW auto: first candidate layer (default 5)")


def calibration_config(args: argparse.Namespace, ffn_mode: str):
    from rlens.calibrate import CalibrationConfig

    return CalibrationConfig(
        ranking=args.ranking, ffn_mode=ffn_mode, window=args.window, ffn_keep=args.ffn_keep, probes=args.probes,
        budget=args.budget, proportion=args.proportion, separate=args.separate, max_samples=args.max_samples,
        seed=args.seed, visual_tokens=args.visual_tokens, text_tokens=args.text_tokens,
        greedy_rounds=args.greedy_rounds, greedy_cache_gib=args.greedy_cache,
        fastv=getattr(args, "fastv", None), vtw=getattr(args, "vtw", None),
        vtw_eta=getattr(args, "vtw_eta", 0.003), vtw_min_layer=getattr(args, "vtw_min_layer", 5))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="rank the decoder layers by redundancy and write plan.json",
        description="Run MODEL on calibration samples, rank its decoder layers from most to least redundant "
                    "(DESIGN §3.3), pick static FFN units, and write plan.json plus plan.report.png beside it.")
    add_model_argument(p)
    p.add_argument("--out", required=True, metavar="PLAN",
                   help="plan.json to write (atomically; an existing file only with --overwrite, and only an rlens plan)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing rlens plan (and its report PNG) at --out; nothing else is ever replaced")
    p.add_argument("--ffn-mode", choices=("static", "dynamic"), default="static",
                   help="static: FFN units fixed at calibration (default); dynamic: picked per input by probes")
    add_calibration_flags(p)
    add_placement_flags(p)
    p.set_defaults(func=run)


def add_placement_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models bigger than memory (accelerate; docs/calibration.md)")
    g.add_argument("--device-map", metavar="auto|balanced|sequential|FILE.json", default=None,
                   help="place the model with accelerate: a strategy, or a JSON object {module: device} with "
                        "devices such as 0, \"cpu\", \"disk\"; layers placed on disk are read from the "
                        "checkpoint one module at a time during calibration (default: all on the CPU)")
    g.add_argument("--max-memory", type=_max_memory, default=None, metavar="DEV=SIZE[,DEV=SIZE]",
                   help="memory per device for --device-map strategies, e.g. cpu=8GiB or 0=20GiB,cpu=64GiB "
                        "(implies --device-map auto); what does not fit goes to disk")
    g.add_argument("--offload-folder", metavar="DIR", default=None,
                   help="where offloaded weights that cannot be read in place from the checkpoint are written "
                        "(default: a temporary folder, removed afterwards)")


def _max_memory(value: str) -> dict:
    out: dict = {}
    for part in value.split(","):
        dev, sep, size = part.partition("=")
        if not sep or not dev.strip() or not size.strip():
            raise argparse.ArgumentTypeError(f"expected DEV=SIZE[,DEV=SIZE] (e.g. cpu=8GiB), got {value!r}")
        dev = dev.strip()
        out[int(dev) if dev.isdigit() else dev] = size.strip()
    return out


def placement(args: argparse.Namespace, offload_dir: str) -> dict | None:
    """``from_pretrained`` placement kwargs from the flags (None: the default, all on the CPU)."""
    import json

    from rlens.errors import InputError

    device_map = args.device_map or ("auto" if args.max_memory else None)
    if device_map is None:
        return None
    if device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        try:
            device_map = json.loads(Path(device_map).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"--device-map {args.device_map}: not a strategy nor a readable JSON file ({e})") from None
        if not isinstance(device_map, dict):
            raise InputError(f"--device-map {args.device_map}: expected a JSON object {{module: device}}")
    out = {"device_map": device_map, "offload_folder": args.offload_folder or offload_dir}
    if args.max_memory:
        out["max_memory"] = args.max_memory
    return out


def run(args: argparse.Namespace) -> int:
    from rlens.models import load_model

    from rlens.calibrate import report_path_for, write_report
    from rlens.fileio import check_output, write_text_output

    config = calibration_config(args, args.ffn_mode)
    inputs = [p for p in (args.model, args.data) if p and Path(p).exists()]
    png_path = report_path_for(Path(args.out))
    check_output(args.out, "plan", args.overwrite, inputs)  # fail before the long part, check again at the end
    check_output(png_path, "report", args.overwrite, inputs)
    with tempfile.TemporaryDirectory(prefix="rlens-offload-") as offload:
        loaded = load_model(args.model, trust_remote_code=args.trust_remote_code, dtype=args.load_dtype,
                            placement=placement(args, offload))
        plan, report = calibrate(loaded, config, args.data)
        del loaded
    write_text_output(args.out, plan.dumps(), "plan", args.overwrite, inputs)
    png = write_report(report, png_path, args.overwrite)
    print(f"rlens: wrote {args.out} ({plan.summary()}) and {png}", file=sys.stderr)
    return 0


def calibrate(loaded, config, data):
    """Run calibration and print its table on stderr; writes nothing."""
    from rlens.calibrate import format_table, plan_from_model

    plan, report = plan_from_model(loaded, config, data)
    print(format_table(report), file=sys.stderr)
    return plan, report
