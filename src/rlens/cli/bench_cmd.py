"""``rlens bench BUNDLE [--against OTHER]``: prefill latency, decode speed, memory, FLOPs ratio."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlens.cli.flags import add_flags, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark a bundle's decoder (optionally A/B against another bundle)",
        description="Time BUNDLE's decoder on synthetic inputs (random inputs_embeds with a visual span of "
                    "--visual-tokens tokens; no image): prefill latency, decode tokens/s, peak RSS, weight "
                    "bytes and the plan's analytic FLOPs ratio. With --against, the two bundles run "
                    "alternately (A/B/A/B) in one process and ratios BUNDLE/OTHER are the median of pairs.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    p.add_argument("--against", metavar="OTHER_BUNDLE", help="bundle to compare with (e.g. the unreduced one)")
    from rlens.configs import BenchConfig, RunnerConfig

    add_flags(p, BenchConfig)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON (docs/runtime.md)")
    add_flags(p, RunnerConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlens.configs import BenchConfig, RunnerConfig
    from rlens.runtime.bench import bench, format_table

    if args.json:
        check_json_out(Path(args.json))  # before the benchmark, not after it
    cfg, runner = config_from_args(BenchConfig, args), config_from_args(RunnerConfig, args)
    result = bench(args.bundle, args.against, cfg, providers=runner.provider_list, backend=runner.backend,
                   threads=runner.threads)
    print(format_table(result))
    if args.json:
        write_results(Path(args.json), result)
        print(f"rlens: wrote {args.json}", file=sys.stderr)
    return 0


def check_json_out(path: Path) -> None:
    """--json may name a new file or an earlier bench result (a JSON object), nothing else."""
    from rlens.errors import OutputError

    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(f"--json {path} is a folder, link or device; give a file name")
    if path.exists():
        try:
            ok = path.stat().st_size < 1 << 24 and isinstance(json.loads(path.read_bytes()).get("bundles"), list)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise OutputError(f"--json {path} exists and is not an rlens bench result; refusing to replace it")


def write_results(path: Path, result: dict) -> None:
    from rlens.errors import OutputError
    from rlens.fileio import write_json_atomic

    check_json_out(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, result)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
