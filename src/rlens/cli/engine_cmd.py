"""``rlens build-engine BUNDLE``: TensorRT engines for a bundle, built on the target GPU."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-engine", help="build TensorRT engines for a bundle (on the target GPU)",
        description="Build strongly typed TensorRT engines from BUNDLE's ONNX graphs (decoder with a prefill and a "
                    "decode optimization profile, embed_tokens, vision) into BUNDLE/engines/, recorded in "
                    "manifest.json with the GPU, compute capability and TensorRT version. Engines never move "
                    "between GPUs or TensorRT versions. Needs TensorRT and a GPU (docs/jetson.md).")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder written by rlens export / rlens-export")
    p.add_argument("--plugin-lib", metavar="PATH",
                   help="librlens_trt_plugins.so for plugin-mode bundles (default: $RLENS_PLUGIN_LIB or build/plugins)")
    p.add_argument("--max-visual-tokens", type=int, default=1024, metavar="N",
                   help="visual tokens the prefill profile is tuned for (default 1024)")
    p.add_argument("--max-seq", type=int, default=2048, metavar="N",
                   help="longest sequence (prompt + image + generated tokens) the engines accept (default 2048)")
    p.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to read (if present) and update")
    p.add_argument("--workspace", type=int, default=2048, metavar="MB",
                   help="builder workspace limit in MB (default 2048; use 512-1024 on 8 GB Jetsons)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.engine import EngineConfig, engine_from_bundle

    config = EngineConfig(plugin_lib=args.plugin_lib, max_visual_tokens=args.max_visual_tokens,
                          max_seq=args.max_seq, timing_cache=args.timing_cache, workspace_mb=args.workspace)
    engine_from_bundle(args.bundle, config)
    return 0
