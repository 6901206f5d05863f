"""``rlens build-engine BUNDLE``: TensorRT engines for a bundle, built on the target GPU."""

from __future__ import annotations

import argparse

from rlens.cli.flags import add_flags, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-engine", help="build TensorRT engines for a bundle (on the target GPU)",
        description="Build strongly typed TensorRT engines from BUNDLE's ONNX graphs (decoder with a prefill and a "
                    "decode optimization profile, embed_tokens, vision) into BUNDLE/engines/, recorded in "
                    "manifest.json with the GPU, compute capability and TensorRT version. Engines never move "
                    "between GPUs or TensorRT versions. Needs TensorRT and a GPU (docs/jetson.md).")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder written by rlens export / rlens-export")
    from rlens.configs import EngineConfig

    add_flags(p, EngineConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.configs import EngineConfig
    from rlens.engine import engine_from_bundle

    engine_from_bundle(args.bundle, config_from_args(EngineConfig, args))
    return 0
