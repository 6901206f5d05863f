"""``rlens bench BUNDLE [--against OTHER]``: prefill latency, decode speed, memory, FLOPs ratio."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlens.cli.flags import add_flags, config_from_args
from rlens.cli.run_cmd import add_provider_flag, providers_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark a bundle's decoder (optionally A/B against another bundle)",
        description="Time BUNDLE's decoder on synthetic inputs (random inputs_embeds with a visual span of "
                    "--visual-tokens tokens; no image): prefill latency, decode tokens/s, peak RSS, weight "
                    "bytes and the plan's analytic FLOPs ratio. With --against, the two bundles run "
                    "alternately (A/B/A/B) in one process and ratios BUNDLE/OTHER are the median of pairs.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    p.add_argument("--against", metavar="OTHER_BUNDLE", help="bundle to compare with (e.g. the unreduced one)")
    from rlens.configs import BenchConfig

    add_flags(p, BenchConfig)
    p.add_argument("--threads", type=int, default=0, metavar="N", help="intra-op threads (0 = ONNX Runtime's)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON (docs/runtime.md)")
    add_provider_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.configs import BenchConfig
    from rlens.runtime.bench import bench, format_table

    cfg = config_from_args(BenchConfig, args)
    result = bench(args.bundle, args.against, cfg, providers=providers_of(args), backend=args.backend,
                   threads=args.threads)
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"rlens: wrote {args.json}", file=sys.stderr)
    return 0
