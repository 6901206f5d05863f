"""``rlens calibrate MODEL --out plan.json``: rank the layers and write the plan (+ report PNG)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rlens.cli import add_model_argument
from rlens.cli.flags import add_flags, config_from_args


def add_calibration_flags(p: argparse.ArgumentParser, exclude: set[str] = frozenset()) -> None:
    """Flags shared by ``rlens calibrate`` and ``rlens-export``: MODEL's calibration data, then
    every flag of :class:`rlens.configs.CalibrationConfig`."""
    from rlens.configs import CalibrationConfig

    p.add_argument("--data", metavar="FILE",
                   help='JSONL calibration set, lines {"image": path, "prompt": str, "answer": str (optional)}, '
                        "image paths relative to the file (default: a small built-in set of generated images)")
    add_flags(p, CalibrationConfig, exclude=exclude)


def add_pruning_method_flags(g) -> None:
    """One ``--<method>`` flag per registered token pruning method (rlens.pruning)."""
    from rlens.pruning import PRUNING_METHODS

    for m in PRUNING_METHODS.values():
        g.add_argument(f"--{m.name}", type=m.parse_flag, default=None, metavar=m.metavar, help=m.help)


def calibration_config(args: argparse.Namespace, ffn_mode: str):
    from rlens.configs import CalibrationConfig

    return config_from_args(CalibrationConfig, args, ffn_mode=ffn_mode)


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
