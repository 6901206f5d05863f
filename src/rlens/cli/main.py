"""``rlens`` (one subcommand per stage) and ``rlens-export``. Thin adapters: every user error is a
typed :class:`~rlens.errors.RlensError`, printed as one line with exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rlens import __version__
from rlens.cli.checks import Parser, check_ranges, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rlens",
        description="RedundancyLens for multimodal LLMs: calibrate, export and run reduced bundles.",
    )
    parser.add_argument("--version", action="version", version=f"rlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from rlens.cli import bench_cmd, calibrate_cmd, doctor_cmd, engine_cmd, export_cmd, inspect_cmd, run_cmd

    inspect_cmd.add_parser(sub)
    calibrate_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    engine_cmd.add_parser(sub)
    run_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)
    doctor_cmd.add_parser(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(prog: str) -> None:
    """Library messages (``logging.getLogger("rlens...")``) go to stderr as ``prog: message``; the
    library itself never prints to stderr nor configures logging."""
    logger = logging.getLogger("rlens")
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    logger.setLevel(logging.INFO)


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    configure_logging(parser.prog)

    def call() -> int:
        check_ranges(args)
        return args.func(args)

    return run_command(parser.prog, call)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return _run(build_parser(), argv)


def export_main(argv: list[str] | None = None) -> int:
    """``rlens-export``: calibrate + export (+ build-engine) as one build step."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from rlens.cli import one_step

    return _run(one_step.build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
