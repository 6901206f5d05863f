"""``rlens doctor``: the device check (the work is in rlens.engine.doctor, imported only when run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rlens.plugins import DOCTOR_BUNDLE as DEFAULT_BUNDLE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this device: GPU, TensorRT, plugin, kernels, a tiny engine (no torch)",
                       description="Check this device with only the runtime install + TensorRT: GPU, TensorRT "
                                   "version, plugin registration, the kernels against the numpy reference, a tiny "
                                   "engine against ONNX Runtime, hollow vs dense timings. Prints one table; every "
                                   "skipped row says why.")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                   help=f"plugin-mode bundle to build and compare (default: the shipped {DEFAULT_BUNDLE.name})")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per measurement (default 20)")
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.engine import doctor

    return doctor._main(args)
