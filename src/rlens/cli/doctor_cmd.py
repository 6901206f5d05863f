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
    from rlens.cli.flags import add_flags
    from rlens.configs import DoctorConfig

    add_flags(p, DoctorConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.cli.flags import config_from_args
    from rlens.configs import DoctorConfig
    from rlens.engine import doctor

    cfg = config_from_args(DoctorConfig, args)
    out = Path(cfg.json) if cfg.json else None
    if out is not None:
        check_json_out(out)  # before the checks run, not after
    rows = doctor.run_and_print(Path(cfg.bundle) if cfg.bundle else DEFAULT_BUNDLE, cfg.reps)
    if out is not None:
        from rlens.fileio import write_json_atomic

        check_json_out(out)
        write_json_atomic(out, {"format": "rlens.doctor", "rows": rows})
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


def check_json_out(path: Path) -> None:
    """--json may name a new file or an earlier doctor result, nothing else (never a user's file)."""
    import json

    from rlens.errors import OutputError

    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(f"--json {path} is a folder, link or device; give a file name")
    if not path.parent.is_dir():
        raise OutputError(f"--json {path}: folder {path.parent} does not exist")
    if path.exists():
        try:
            ours = path.stat().st_size < 1 << 24 and json.loads(path.read_bytes()).get("format") == "rlens.doctor"
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise OutputError(f"--json {path} exists and is not an rlens doctor result; refusing to replace it")
