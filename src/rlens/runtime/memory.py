"""Process memory as the benchmark reports it (Linux; ``None`` elsewhere)."""

from __future__ import annotations

import ctypes
import os
import resource
from pathlib import Path


def resident_bytes() -> int | None:
    """Resident set size now, after returning freed heap to the OS (glibc ``malloc_trim``), so a
    difference of two readings is what was allocated and kept in between (e.g. a graph's weights)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
