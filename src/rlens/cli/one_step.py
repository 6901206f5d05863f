"""``rlens-export MODEL BUNDLE``: calibrate + export (+ build-engine with --engine) in one step."""

from __future__ import annotations

import argparse
import sys

from rlens.configs import EngineConfig

from rlens.cli import add_model_argument
from rlens.cli.checks import Parser
from rlens.cli.flags import add_flags, config_from_args
from rlens.cli.calibrate_cmd import add_calibration_flags, calibrate, calibration_config
from rlens.cli.export_cmd import add_export_flags, export_config, inputs_of, write_bundle


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="rlens-export",
        description="One build step: calibrate MODEL (or take --plan), export the reduced bundle to BUNDLE "
                    "(verified against the PyTorch reference), and with --engine build its TensorRT engines.")
    add_model_argument(p)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder to create")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--plan", metavar="P", help="use this plan.json instead of calibrating")
    src.add_argument("--no-reduce", action="store_true", help="export the unreduced model (for comparison)")
    add_calibration_flags(p, exclude={"ffn_mode", "image_splitting"})  # the export's flags
    add_export_flags(p)
    g = p.add_argument_group("with --engine")
    g.add_argument("--engine", action="store_true",
                   help="also build TensorRT engines into BUNDLE/engines (needs TensorRT and a GPU)")
    add_flags(g, EngineConfig, only={"plugin_lib", "max_seq"})
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from rlens.models import load_model
    from rlens.plan import empty_plan, load_plan

    from rlens.fileio import check_output

    export = export_config(args)  # flag errors before any work
    check_output(args.bundle, "bundle", export.overwrite, inputs_of(args))
    if args.engine and export.ops is None:  # a TensorRT bundle keeps the standard ops
        from dataclasses import replace

        export = replace(export, ops="standard")
    if args.engine:
        from rlens.engine.build import import_tensorrt

        import_tensorrt()  # fail now, not after a long export
    loaded = load_model(args.model, trust_remote_code=args.trust_remote_code, dtype=args.load_dtype)
    info = loaded.info()
    if args.plan:
        plan = load_plan(args.plan, info)
    elif args.no_reduce:
        plan = empty_plan(info)
    else:
        plan, _ = calibrate(loaded, calibration_config(args, args.ffn_mode or "static"), args.data)
    write_bundle(loaded, plan, args.bundle, export)
    if args.engine:
        from rlens.engine import engine_from_bundle

        visual = args.visual_tokens or EngineConfig.max_visual_tokens
        engine_from_bundle(args.bundle, config_from_args(EngineConfig, args,
                                                         max_visual_tokens=min(visual, args.max_seq - 1)))
    print(f"rlens-export: {args.bundle} ready", file=sys.stderr)
    return 0
