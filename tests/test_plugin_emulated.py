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

import ctypes
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from rlens.plugins.spec import reference_hollow_attention

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


# ---- ctypes, against rlens.plugins.spec (the project's golden) ------------------------------

CASES = [  # batch, heads, kv_heads, q_len, past, head_dim, span, window
    (2, 4, 2, 70, 0, 64, (10, 40), 8),
    (1, 8, 2, 300, 37, 128, (5, 256), 64),
    (1, 2, 1, 33, 12, 96, (0, 33), 1),
    (1, 4, 4, 50, 0, 32, (0, 0), 16),
    (1, 2, 2, 40, 3, 256, (30, 10), 100),
    (1, 12, 2, 1, 200, 128, (0, 0), 64),  # decode step, GQA 6 (Qwen2-VL-2B's heads)
    (1, 4, 2, 90, 0, 16, (10, 64), 4),  # the tiny presets' head_dim
]
FUNCTIONS = {"f32": "rlens_hollow_attention_f32", "f16_v1": "rlens_hollow_attention_f16_simt",
             "f16_v2": "rlens_hollow_attention_f16_tc"}


@pytest.fixture(scope="module")
def kernel_lib(emu):
    lib = ctypes.CDLL(str(emu / "librlens_hollow_kernel_cpu.so"))
    i32, ptr = ctypes.c_int32, ctypes.c_void_p
    for name in FUNCTIONS.values():
        fn = getattr(lib, name)
        fn.argtypes = [ptr] * 5 + [i32] * 7 + [ctypes.c_float, ptr]
        fn.restype = ctypes.c_int
    lib.rlens_hollow_tc_supported.argtypes = [i32] * 3
    return lib


def run_kernel(fn, case, dtype, seed=0):
    batch, heads, kv_heads, q_len, past, dim, span, window = case
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, heads, q_len, dim)).astype(dtype)
    k, v = (rng.standard_normal((batch, kv_heads, past + q_len, dim)).astype(dtype) for _ in range(2))
    out = np.full_like(q, np.nan)
    span_a = np.asarray(span, np.int64)
    rc = fn(q.ctypes.data, k.ctypes.data, v.ctypes.data, span_a.ctypes.data, out.ctypes.data,
            batch, heads, kv_heads, q_len, past + q_len, dim, window, dim**-0.5, None)
    return rc, out, reference_hollow_attention(q, k, v, span, window, dim**-0.5)


@pytest.mark.parametrize("kind", list(FUNCTIONS))
def test_kernels_match_the_numpy_reference(kernel_lib, kind):
    dtype, tol = (np.float32, 1e-4) if kind == "f32" else (np.float16, 1e-2)
    fn, worst, ran = getattr(kernel_lib, FUNCTIONS[kind]), 0.0, 0
    for case in CASES:
        if kind == "f16_v2" and not kernel_lib.rlens_hollow_tc_supported(case[1], case[2], case[5]):
            continue
        rc, out, want = run_kernel(fn, case, dtype)
        assert rc == 0, (case, rc)
        np.testing.assert_allclose(out.astype(np.float64), want, atol=tol, rtol=tol, err_msg=str(case))
        worst, ran = max(worst, float(np.abs(out - want).max())), ran + 1
    print(kind, f"{ran} cases, max abs error {worst:.2e}")
    assert ran >= 6


def test_v2_refuses_shapes_it_does_not_handle(kernel_lib):
    assert kernel_lib.rlens_hollow_tc_supported(12, 2, 128) == 1
    assert kernel_lib.rlens_hollow_tc_supported(2, 2, 256) == 0  # head_dim > 128: v1
    assert kernel_lib.rlens_hollow_tc_supported(2, 2, 72) == 0  # not a multiple of 16
    assert kernel_lib.rlens_hollow_tc_supported(65, 1, 64) == 0  # group larger than a block's rows
    rc, _, _ = run_kernel(kernel_lib.rlens_hollow_attention_f16_tc, (1, 2, 2, 4, 0, 256, (0, 4), 2), np.float16)
    assert rc == 1  # cudaErrorInvalidValue, nothing launched


# ---- slow: the full runs, other interleavings, sanitizers -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["simt", "tc"])
def test_full_run_with_tile_sweep(emu, variant):
    """v1 (1002 checks): 28 built-in cases x fp32/fp16, the sweep (W 1..17,31..33 x past 0..15 x 2 span
    starts, fp32), 300 random shapes, 6 argument checks. v2 (fp16 cases only; fp32 is v1's):
    the sweep in fp16 over W up to 65 x past 0..31 (its 32-key tiles) with GQA groups 1 and 3."""
    r = _harness(emu, "--variant", variant, "--full")
    assert r["passed"] >= (1000 if variant == "simt" else 2000)


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
