"""The HollowAttention kernels through their C entry points (ctypes), checked against the numpy
reference and timed -- one code path for the CPU emulation (tests/test_plugin_emulated.py, memory
is host memory) and for a GPU (``rlens doctor``, device memory through polygraphy.cuda).

Imports neither torch nor tensorrt; numpy and ctypes only.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rlens.plugins.spec import reference_hollow_attention

#: entry points and the dtype they take
KERNELS = {"f32": ("rlens_hollow_attention_f32", np.float32), "f16_v1": ("rlens_hollow_attention_f16_simt", np.float16),
           "f16_v2": ("rlens_hollow_attention_f16_tc", np.float16), "f16": ("rlens_hollow_attention_f16", np.float16)}
TOLERANCE = {np.float32: 1e-4, np.float16: 1e-2}

#: batch, heads, kv_heads, q_len, past, head_dim, span (start, length), window
CASES = (
    (2, 4, 2, 70, 0, 64, (10, 40), 8),
    (1, 8, 2, 300, 37, 128, (5, 256), 64),
    (1, 2, 1, 33, 12, 96, (0, 33), 1),
    (1, 4, 4, 50, 0, 32, (0, 0), 16),
    (1, 2, 2, 40, 3, 256, (30, 10), 100),
    (1, 12, 2, 1, 200, 128, (0, 0), 64),  # decode step, GQA 6 (Qwen2-VL-2B's heads)
    (1, 4, 2, 90, 0, 16, (10, 64), 4),  # the tiny presets' head_dim
)


class Memory(Protocol):
    """Where the kernel's buffers live: ``put`` returns an object with ``.ptr``."""

    def put(self, array: np.ndarray) -> Any: ...
    def get(self, buffer: Any, like: np.ndarray) -> np.ndarray: ...
    def synchronize(self) -> None: ...


class HostMemory:
    """For the CPU emulation, whose "device" pointers are host pointers."""

    class _Buffer:
        def __init__(self, array: np.ndarray) -> None:
            self.array = np.ascontiguousarray(array).copy()
            self.ptr = self.array.ctypes.data

    def put(self, array: np.ndarray) -> Any:
        return self._Buffer(array)

    def get(self, buffer: Any, like: np.ndarray) -> np.ndarray:
        return buffer.array.copy()

    def synchronize(self) -> None:
        pass


class DeviceMemory:
    """GPU buffers through polygraphy.cuda (ships with the ``tensorrt`` extra; no torch)."""

    def __init__(self) -> None:
        from polygraphy import cuda

        self._cuda = cuda

    def put(self, array: np.ndarray) -> Any:
        array = np.ascontiguousarray(array)
        buf = self._cuda.DeviceArray.raw((max(array.nbytes, 1),))
        buf.copy_from(array.view(np.uint8).reshape(-1))
        return buf

    def get(self, buffer: Any, like: np.ndarray) -> np.ndarray:
        host = np.empty(like.nbytes, np.uint8)
        self._cuda.wrapper().memcpy(dst=host.ctypes.data, src=buffer.ptr, nbytes=like.nbytes,
                                    kind=self._cuda.MemcpyKind.DeviceToHost)
        return host.view(like.dtype).reshape(like.shape)

    def synchronize(self) -> None:
        self._cuda.wrapper().stream_synchronize(0)


def load_kernel_library(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    i32, ptr = ctypes.c_int32, ctypes.c_void_p
    for name, _ in KERNELS.values():
        fn = getattr(lib, name)
        fn.argtypes = [ptr] * 5 + [i32] * 7 + [ctypes.c_float, ptr]
        fn.restype = ctypes.c_int
    lib.rlens_hollow_tc_supported.argtypes = [i32] * 3
    lib.rlens_hollow_tc_supported.restype = ctypes.c_int
    return lib


@dataclass(frozen=True)
class KernelCheck:
    kind: str
    cases: int
    max_abs: float
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures and self.cases > 0


def random_inputs(case, dtype, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch, heads, kv_heads, q_len, past, dim, _, _ = case
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, heads, q_len, dim)).astype(dtype)
    k, v = (rng.standard_normal((batch, kv_heads, past + q_len, dim)).astype(dtype) for _ in range(2))
    return q, k, v


def launch(lib: ctypes.CDLL, kind: str, memory: Memory, case, q, k, v) -> tuple[int, Any, Any]:
    """Run one kernel call; returns (rc, output buffer, keep-alive of the inputs)."""
    batch, heads, kv_heads, q_len, past, dim, span, window = case
    bufs = [memory.put(x) for x in (q, k, v, np.asarray(span, np.int64), np.full_like(q, np.nan))]
    fn = getattr(lib, KERNELS[kind][0])
    rc = fn(*(b.ptr for b in bufs), batch, heads, kv_heads, q_len, past + q_len, dim, window, dim**-0.5, None)
    return rc, bufs[4], bufs


def check_kernel(lib: ctypes.CDLL, kind: str, memory: Memory, cases=CASES) -> KernelCheck:
    """Every case the kernel supports against reference_hollow_attention (atol = rtol = TOLERANCE)."""
    dtype = KERNELS[kind][1]
    tol = TOLERANCE[dtype]
    ran, worst, failures = 0, 0.0, []
    for case in cases:
        if kind == "f16_v2" and not lib.rlens_hollow_tc_supported(case[1], case[2], case[5]):
            continue
        q, k, v = random_inputs(case, dtype)
        rc, out, _keep = launch(lib, kind, memory, case, q, k, v)
        memory.synchronize()
        got = memory.get(out, q).astype(np.float64)
        want = reference_hollow_attention(q, k, v, case[6], case[7], case[5] ** -0.5)
        err = float(np.max(np.abs(got - want))) if np.isfinite(got).all() else float("inf")
        ran, worst = ran + 1, max(worst, err)
        if rc != 0 or not np.allclose(got, want, atol=tol, rtol=tol):
            failures.append(f"{case}: rc={rc} max_abs={err:.2e}")
    return KernelCheck(kind, ran, worst, tuple(failures))


def time_kernel(lib: ctypes.CDLL, kind: str, memory: Memory, case, reps: int = 20) -> float:
    """Median seconds of one call (inputs resident, synchronised after each call)."""
    q, k, v = random_inputs(case, KERNELS[kind][1])
    batch, heads, kv_heads, q_len, past, dim, span, window = case
    bufs = [memory.put(x) for x in (q, k, v, np.asarray(span, np.int64), np.zeros_like(q))]
    fn = getattr(lib, KERNELS[kind][0])
    args = (*(b.ptr for b in bufs), batch, heads, kv_heads, q_len, past + q_len, dim, window, dim**-0.5, None)
    times = []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        if fn(*args) != 0:
            raise RuntimeError(f"{KERNELS[kind][0]} failed on {case}")
        memory.synchronize()
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - t0)
    return float(np.median(times))
