"""``rlens calibrate MODEL --out plan.json``: rank the layers and write the plan (+ report PNG)."""

from __future__ import annotations

import argparse
import sys
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
    p.add_argument("--out", required=True, metavar="PLAN", help="plan.json to write (atomically)")
    add_calibration_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.models import load_model

    config = calibration_config(args, args.ffn_mode)
    loaded = load_model(args.model, trust_remote_code=args.trust_remote_code)
    plan, report = calibrate(loaded, config, args.data)
    plan.save(args.out)
    from rlens.calibrate import report_path_for, write_report

    png = write_report(report, report_path_for(Path(args.out)))
    print(f"rlens: wrote {args.out} ({plan.summary()}) and {png}", file=sys.stderr)
    return 0


def calibrate(loaded, config, data):
    """Run calibration and print its table on stderr; writes nothing."""
    from rlens.calibrate import format_table, plan_from_model

    plan, report = plan_from_model(loaded, config, data)
    print(format_table(report), file=sys.stderr)
    return plan, report
