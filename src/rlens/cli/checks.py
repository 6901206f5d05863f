"""The CLI's error contract: one line on stderr and exit code 2 for anything a user can cause.

:class:`Parser` prints argparse's own errors as one line; :func:`check_ranges` bounds every numeric
flag (by its dest, wherever it is declared: a config field of :mod:`rlens.configs` or a command's own
flag; the configs' ``__post_init__`` add the rules between fields) so no value reaches a library that would hang, overflow
or crash on it; :func:`run_command` maps typed errors, OS errors (disk full, permissions, a path too
long) and SIGTERM to that contract. An internal bug prints one line too, with its traceback only
under ``RLENS_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from rlens.errors import InputError, RlensError, Terminated

# flag dest -> (lowest, highest) accepted; floats must also be finite
RANGES: dict[str, tuple[float, float]] = {
    "seed": (0, 4294967295), "threads": (0, 256), "max_new_tokens": (1, 1 << 20),
    "temperature": (0.0, 100.0), "top_p": (0.0, 1.0), "visual_tokens": (0, 1 << 20), "text_tokens": (0, 1 << 20),
    "text_before": (0, 1 << 20), "decode_tokens": (1, 1 << 16), "repeat": (1, 10_000), "max_samples": (1, 1 << 24),
    "window": (1, 1 << 20), "probes": (1, 1 << 16), "ffn_keep": (0.0, 1.0), "budget": (0.0, 1.0),
    "proportion": (0.0, 1.0), "greedy_cache_gib": (0.0, 1 << 20), "vtw_eta": (0.0, 1e6), "vtw_min_layer": (0, 1 << 16),
    "opset": (1, 1000), "tolerance": (0.0, 1e6), "max_seq": (2, 1 << 24), "max_visual_tokens": (1, 1 << 24),
    "workspace_mb": (16, 1 << 24), "max_pixels": (1, 1 << 30), "max_tiles": (1, 1024), "weights_block": (16, 256),
    "reps": (1, 100_000),
}
# dests whose flag is not ``--`` + the dest with dashes (config fields with their own ``flag=``)
FLAG_NAMES = {"greedy_cache_gib": "--greedy-cache", "workspace_mb": "--workspace"}


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (``prog: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {one_line(message)} (see --help)", file=sys.stderr)
        sys.exit(2)


def one_line(text: Any) -> str:
    return " ".join(str(text).split())[:2000]


def check_ranges(args: argparse.Namespace) -> None:
    for name, (lo, hi) in RANGES.items():
        value = getattr(args, name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value}")
        if not lo <= value <= hi:
            raise InputError(f"{flag} must be between {lo} and {hi}, got {value}")


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def run_command(prog: str, func: Callable[[], int]) -> int:
    """Call ``func`` under the error contract; SIGTERM is handled like Ctrl-C (cleanup runs)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        return int(func() or 0)
    except RlensError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"{prog}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; nothing was left half-written",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except OSError as e:  # the environment: disk full, permissions, a name too long, ...
        if os.environ.get("RLENS_DEBUG") == "1":
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{prog}: error: {one_line(e.strerror or e)}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{prog}: error: out of memory", file=sys.stderr)
        return 2
    except Exception as e:  # an rlens bug: one line unless debugging
        if os.environ.get("RLENS_DEBUG") == "1":
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {one_line(e)[:300]} (a bug in rlens; rerun with "
              "RLENS_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
