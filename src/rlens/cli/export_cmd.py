"""``rlens export``: model + plan -> bundle/ (ONNX), verified against the PyTorch reference."""

from __future__ import annotations

import argparse
import sys

from rlens.cli import add_model_argument
from rlens.cli.flags import add_flags, config_from_args


def add_export_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``rlens export`` and ``rlens-export``: those of :class:`rlens.configs.ExportConfig`."""
    from rlens.configs import ExportConfig

    add_flags(p, ExportConfig)


def export_config(args: argparse.Namespace):
    from rlens.configs import ExportConfig

    return config_from_args(ExportConfig, args)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a bundle (vision, embeddings, decoder ONNX) under a plan",
        description="Export MODEL to an rlens bundle (DESIGN §5): vision.onnx, embed_tokens.onnx, decoder.onnx "
                    "with KV cache and the plan's reductions, processor files and manifest.json. Written to a "
                    "temporary folder beside --out and renamed into place only after verification.")
    add_model_argument(p)
    p.add_argument("--plan", metavar="P", help="plan.json to apply (omit to export the unreduced model)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to create")
    add_export_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.models import load_model
    from rlens.plan import empty_plan, load_plan

    from rlens.fileio import check_output

    config = export_config(args)
    check_output(args.out, "bundle", config.overwrite, inputs_of(args))  # before the long part; again at the end
    loaded = load_model(args.model, trust_remote_code=args.trust_remote_code, dtype=args.load_dtype)
    info = loaded.info()
    plan = load_plan(args.plan, info) if args.plan else empty_plan(info)
    return write_bundle(loaded, plan, args.out, config)


def inputs_of(args: argparse.Namespace) -> list[str]:
    """The paths a command reads (an output may never be or contain one)."""
    from pathlib import Path

    names = (getattr(args, n, None) for n in ("model", "plan", "data"))
    return [p for p in names if p and Path(p).exists()]


def write_bundle(loaded, plan, out, config) -> int:
    import json
    import time

    from rlens.export import bundle_from_plan

    t0 = time.perf_counter()
    path = bundle_from_plan(loaded, plan, out, config, consume=True)  # the CLI needs the model no more
    manifest = json.loads((path / "manifest.json").read_text())
    diffs = manifest.get("verification") or {}
    print(f"rlens: wrote {path} ({plan.summary()}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if diffs:
        print(f"rlens: verification {json.dumps(diffs, sort_keys=True)}", file=sys.stderr)
    return 0
