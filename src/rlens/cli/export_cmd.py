"""``rlens export``: model + plan -> bundle/ (ONNX), verified against the PyTorch reference."""

from __future__ import annotations

import argparse
import sys

from rlens.cli import add_model_argument


def add_export_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``rlens export`` and ``rlens-export``."""
    p.add_argument("--attention", choices=("portable", "plugin"), default="portable",
                   help="hollow layers as standard ONNX ops (portable, default) or HollowAttention plugin nodes "
                        "with an ONNX function body (plugin)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                   help="graph precision; fp16 keeps norms, softmax and residual sums in fp32 (default fp32)")
    p.add_argument("--ffn-mode", choices=("static", "dynamic"), default=None,
                   help="override the plan's FFN mode (static needs the plan's calibrated ffn_indices)")
    p.add_argument("--ops", choices=("standard", "ort"), default=None,
                   help="ort: ONNX Runtime contrib ops (GroupQueryAttention with the KV cache, RotaryEmbedding, "
                        "SkipSimplifiedLayerNormalization, packed q/k/v) in unreduced layers and the text rows of "
                        "reduced ones; standard: ONNX ops only, as TensorRT parses them (default: ort, standard "
                        "with --attention plugin or --engine)")
    p.add_argument("--weights", choices=("float", "int8", "int4"), default="float",
                   help="weight-only quantization after the FFN split, block-wise along K: MatMulNBits with --ops "
                        "ort, DequantizeLinear (needs --opset 21) with --ops standard (default float = --dtype)")
    p.add_argument("--weights-block", type=int, default=32, metavar="N",
                   help="rows of K per quantization scale: 16, 32, 64, 128 or 256 (default 32)")
    p.add_argument("--opset", type=int, default=18, metavar="N", help="ONNX opset, 18..21 (default 18)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the ONNX Runtime vs PyTorch check at export (on by default; fails the export "
                        "and leaves nothing when the max abs diff exceeds the tolerance)")
    p.add_argument("--tolerance", type=float, default=None, metavar="T",
                   help="max abs diff allowed at verification (default 1e-4 fp32, 5e-2 fp16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")


def export_config(args: argparse.Namespace):
    from rlens.export import ExportConfig

    return ExportConfig(attention=args.attention, dtype=args.dtype, ffn_mode=args.ffn_mode, opset=args.opset,
                        verify=not args.no_verify, tolerance=args.tolerance, overwrite=args.overwrite,
                        ops=args.ops, weights=args.weights, weights_block=args.weights_block)


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
