"""The HollowAttention CUDA kernels (v1 CUDA cores, v2 tensor cores) executed on the CPU.

plugins/hollow_attention/tests/cudacpu/ is a small CUDA emulation (one fiber per CUDA thread,
warp intrinsics, __half, WMMA m16n16k16): the unmodified .cu source is compiled with g++ (only
the <<<>>> launch is rewritten) and its C entry points are compared with a float64 brute force
(the C++ harness) and with rlens.plugins.spec's numpy reference (ctypes, here).

Default run: the emulation's self-test, the built-in cases (fp32: v1; fp16: v2 where it applies,
v1 otherwise) and the numpy cross-check of both fp16 kernels. ``slow``: the full 990-check run
(tile sweep over W mod 16 x past mod 16, 300 random shapes) for v1 and v2, two other thread
interleavings, and an AddressSanitizer + UBSan build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from rlens.plugins import kernel_check

REPO = Path(__file__).resolve().parents[1]
EMU = REPO / "plugins" / "hollow_attention" / "tests" / "cudacpu"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("bash") is None,
                                reason="needs g++ and bash to build the CPU emulation of the kernel")


def _build(out: Path, extra: str = "") -> Path:
    env = dict(os.environ, REPO=str(REPO), OUT=str(out), EXTRA=extra)
    proc = subprocess.run(["bash", str(EMU / "emu" / "build.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def emu(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("cudacpu"))


def _harness(build: Path, *args: str, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([str(build / "harness"), *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    seconds = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()[-2:]
    counts = re.match(r"(\d+) passed, (\d+) failed, (\d+) skipped", tail[-1])
    errors = re.match(r"max_abs f32 (\S+) f16 (\S+)", tail[0])
    assert counts and errors, proc.stdout[-3000:] + proc.stderr[-3000:]
    failures = [line for line in proc.stdout.splitlines() if "FAIL" in line]
    result = {"passed": int(counts[1]), "failed": int(counts[2]), "skipped": int(counts[3]),
              "max_abs_f32": float(errors[1]), "max_abs_f16": float(errors[2]), "seconds": round(seconds, 1)}
    print(" ".join(args), result)
    assert proc.returncode == 0 and result["failed"] == 0, "\n".join(failures[:20]) + proc.stderr[-2000:]
    return result


def test_emulation_selftest(emu):
    proc = subprocess.run([str(emu / "selftest")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("0 failed"), proc.stdout[-3000:]


def test_kernels_builtin_cases(emu):
    """28 cases x fp32/fp16 + 6 argument checks: fp32 through v1; fp16 through v2 where it
    applies (D % 16 == 0, D <= 128, Hq / Hkv <= 64), through v1 for the rest (D 256, G 65)."""
    r = _harness(emu, "--variant", "auto")
    assert r["passed"] >= 60 and r["max_abs_f32"] < 1e-5 and r["max_abs_f16"] < 5e-3


# ---- ctypes, against rlens.plugins.spec (the project's golden), as rlens doctor does on a GPU --


@pytest.fixture(scope="module")
def kernel_lib(emu):
    return kernel_check.load_kernel_library(str(emu / "librlens_hollow_kernel_cpu.so"))


@pytest.mark.parametrize("kind", ["f32", "f16_v1", "f16_v2", "f16"])
def test_kernels_match_the_numpy_reference(kernel_lib, kind):
    result = kernel_check.check_kernel(kernel_lib, kind, kernel_check.HostMemory())
    print(kind, f"{result.cases} cases, max abs error {result.max_abs:.2e}")
    assert result.ok, result.failures
    assert result.cases >= (6 if kind == "f16_v2" else 7)


def test_v2_refuses_shapes_it_does_not_handle(kernel_lib):
    assert kernel_lib.rlens_hollow_tc_supported(12, 2, 128) == 1
    assert kernel_lib.rlens_hollow_tc_supported(2, 2, 256) == 0  # head_dim > 128: v1
    assert kernel_lib.rlens_hollow_tc_supported(2, 2, 72) == 0  # not a multiple of 16
    assert kernel_lib.rlens_hollow_tc_supported(65, 1, 64) == 0  # group larger than a block's rows
    case = (1, 2, 2, 4, 0, 256, (0, 4), 2)
    rc, _, _ = kernel_check.launch(kernel_lib, "f16_v2", kernel_check.HostMemory(), case,
                                   *kernel_check.random_inputs(case, np.float16))
    assert rc == 1  # cudaErrorInvalidValue, nothing launched


def test_a_wrong_kernel_is_caught(kernel_lib):
    """The check can fail: a window of 1 given to the reference while the kernel runs W=8."""
    wrong = [(2, 4, 2, 70, 0, 64, (10, 40), 8)]
    memory = kernel_check.HostMemory()
    assert kernel_check.check_kernel(kernel_lib, "f16_v2", memory, wrong).ok
    original = kernel_check.reference_hollow_attention
    try:
        kernel_check.reference_hollow_attention = lambda q, k, v, span, w, s: original(q, k, v, span, 1, s)
        assert not kernel_check.check_kernel(kernel_lib, "f16_v2", memory, wrong).ok
    finally:
        kernel_check.reference_hollow_attention = original


# ---- slow: the full runs, other interleavings, sanitizers -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["simt", "tc"])
def test_full_run_with_tile_sweep(emu, variant):
    """v1 (1002 checks): 28 built-in cases x fp32/fp16, the sweep (W 1..17,31..33 x past 0..15 x 2 span
    starts, fp32), 300 random shapes, 6 argument checks. v2 (fp16 cases only; fp32 is v1's):
    the sweep in fp16 over W up to 65 x past 0..31 (its 32-key tiles) with GQA groups 1 and 3
    (1814 checks; the fp16 cases v2 does not handle, D 256 / G 65, are skipped)."""
    r = _harness(emu, "--variant", variant, "--full")
    assert r["passed"] >= (1000 if variant == "simt" else 1800)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_other_thread_interleavings(emu, schedule):
    _harness(emu, "--variant", "auto", env={"CUDACPU_SCHEDULE": schedule})


@pytest.mark.slow
def test_address_sanitizer_subset(tmp_path):
    """ASan + UBSan build: built-in cases and 40 random shapes (out-of-bounds loads of K/V/Q)."""
    build = _build(tmp_path / "asan", extra="-fsanitize=address,undefined -fno-sanitize-recover=undefined")
    env = {"ASAN_OPTIONS": "detect_leaks=0"}
    _harness(build, "--variant", "auto", env=env)
    _harness(build, "--variant", "tc", "--random", "40", "11", env=env)


def test_kernel_timing_path(kernel_lib):
    """kernel_check.time_kernel (what rlens doctor times on a GPU) on a small emulated case."""
    case = (1, 4, 2, 40, 0, 32, (4, 30), 8)
    seconds = kernel_check.time_kernel(kernel_lib, "f16_v2", kernel_check.HostMemory(), case, reps=2)
    assert 0 < seconds < 60
