"""Builds of plugins/: nvcc compile of the kernel per target arch, the CMake build with and
without TensorRT headers, and (on a CUDA GPU only) the kernel against the numpy reference.

TensorRT headers come from the TensorRT_ROOT env var (in these tests it may list several roots
separated by os.pathsep, e.g. one per TensorRT version) or the system include dirs."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rlens.plugins.spec import reference_hollow_attention

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"
KERNEL = PLUGINS / "hollow_attention" / "hollow_attention_kernel.cu"
SYSTEM_TRT_DIRS = ["/usr/include/aarch64-linux-gnu", "/usr/include/x86_64-linux-gnu", "/usr/include"]

NVCC = shutil.which("nvcc")
CMAKE = shutil.which("cmake")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: CUDA compile not checked")
needs_cmake = pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH")


def tensorrt_roots() -> list[str]:
    env = [p for p in os.environ.get("TensorRT_ROOT", "").split(os.pathsep) if p]
    roots = [p for p in env if (Path(p) / "include" / "NvInferRuntime.h").is_file()]
    if not env:  # system install (NVIDIA apt packages, JetPack): cmake finds it without TensorRT_ROOT
        roots += ["" for d in SYSTEM_TRT_DIRS if (Path(d) / "NvInferRuntime.h").is_file()][:1]
    return roots


def cmake_build(build: Path, *args: str, targets: tuple[str, ...] = ()) -> str:
    configure = subprocess.run([CMAKE, "-S", str(PLUGINS), "-B", str(build), *args],
                               capture_output=True, text=True, check=True)
    cmd = [CMAKE, "--build", str(build), "-j", str(os.cpu_count() or 2)]
    for target in targets:
        cmd += ["--target", target]
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    return configure.stdout + configure.stderr


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("arch", ["87", "90"])
def test_kernel_compiles_for_arch(arch, tmp_path):
    obj = tmp_path / f"hollow_sm{arch}.o"
    proc = subprocess.run(
        [NVCC, "-std=c++17", "-O3", "-Xcompiler", "-fPIC,-Wall", f"-arch=sm_{arch}",
         "-Xptxas", "-warn-spills",
         "-c", str(KERNEL), "-o", str(obj)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert obj.stat().st_size > 0
    assert "spill" not in proc.stderr.lower(), proc.stderr


@pytest.mark.slow
@needs_cmake
def test_cmake_without_tensorrt_builds_kernel_library_only(tmp_path):
    args = ["-DTensorRT_ROOT=" + str(tmp_path / "no-tensorrt"),
            "-DTensorRT_INCLUDE_DIR=TensorRT_INCLUDE_DIR-NOTFOUND", "-DCMAKE_CUDA_ARCHITECTURES=87"]
    log = cmake_build(tmp_path / "build", *args)
    assert (tmp_path / "build" / "tile_schedule_test").is_file()
    if NVCC is None:
        assert "no CUDA compiler found" in log
        return
    if "TensorRT headers (NvInferRuntime.h) not found" not in log:
        pytest.skip("TensorRT headers are installed system-wide: the no-TensorRT path is not reachable here")
    assert (tmp_path / "build" / "librlens_hollow_kernel.so").is_file()
    assert not (tmp_path / "build" / "librlens_trt_plugins.so").exists()


def _fake_tensorrt(root: Path, version: str) -> Path:
    """A TensorRT include dir with only the two files CMake reads (a stand-in for JetPack's)."""
    major, minor, patch = version.split(".")
    inc = root / "include"
    inc.mkdir(parents=True)
    (inc / "NvInferRuntime.h").write_text("// stand-in\n")
    (inc / "NvInferVersion.h").write_text(
        f"#define NV_TENSORRT_MAJOR {major}\n#define NV_TENSORRT_MINOR {minor}\n#define NV_TENSORRT_PATCH {patch}\n")
    return root


def _configure_fails(tmp_path: Path, root: Path, path_env: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "TensorRT_ROOT")}
    env["PATH"] = path_env
    proc = subprocess.run([CMAKE, "-S", str(PLUGINS), "-B", str(tmp_path / "build"), f"-DTensorRT_ROOT={root}"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0, proc.stdout
    assert proc.stderr.count("CMake Error") == 1, proc.stderr  # one clear error, nothing else
    return " ".join(proc.stderr.split())


def _path_without_nvcc() -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvcc").exists()]
    return os.pathsep.join(dirs + [str(Path(CMAKE).parent)])


@needs_cmake
def test_stock_jetpack_6_0_gets_one_clear_error(tmp_path):
    """JetPack 6.0: TensorRT 8.6 headers and no nvcc on PATH -> FATAL_ERROR naming the version."""
    err = _configure_fails(tmp_path, _fake_tensorrt(tmp_path / "trt", "8.6.2"), _path_without_nvcc())
    assert "TensorRT 8.6.2" in err and "needs TensorRT >= 10.3" in err and "JetPack 6.0 ships TensorRT 8.6" in err


@needs_cmake
def test_tensorrt_headers_without_nvcc_is_an_error_not_a_silent_skip(tmp_path):
    """JetPack 6.1+: TensorRT 10.3 headers, nvcc in /usr/local/cuda/bin but not on PATH."""
    err = _configure_fails(tmp_path, _fake_tensorrt(tmp_path / "trt", "10.3.0"), _path_without_nvcc())
    assert "TensorRT 10.3.0 headers found" in err and "no CUDA compiler" in err and "/usr/local/cuda/bin" in err


@needs_nvcc
@needs_cmake
@pytest.mark.parametrize("root", tensorrt_roots() or [None])
def test_cmake_builds_trt_plugin_library(root, tmp_path):
    if root is None:
        pytest.skip("no TensorRT headers: set TensorRT_ROOT=<dir with include/NvInferRuntime.h> "
                    "(or install them system-wide) to compile librlens_trt_plugins.so")
    args = ["-DCMAKE_CUDA_ARCHITECTURES=87"] + ([f"-DTensorRT_ROOT={root}"] if root else [])
    log = cmake_build(tmp_path / "build", *args)
    print(next(line for line in log.splitlines() if "rlens: TensorRT" in line))
    lib = tmp_path / "build" / "librlens_trt_plugins.so"
    assert lib.is_file() and (tmp_path / "build" / "librlens_hollow_kernel.so").is_file()
    if shutil.which("nm"):
        nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True)
        symbols = nm.stdout
        exported = ["getCreators", "setLoggerFinder"]
        exported += ["rlens_hollow_attention_f32", "rlens_hollow_attention_f16"]
        for name in exported:
            assert f" T {name}\n" in symbols, name


# ---------------------------------------------------------------------------------------------
# GPU: the standalone kernel library through ctypes (needs a CUDA GPU and torch with CUDA)


@pytest.fixture(scope="module")
def kernel_lib(tmp_path_factory):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False): kernel numerics not checked")
    if NVCC is None or CMAKE is None:
        pytest.skip("nvcc/cmake missing: cannot build librlens_hollow_kernel.so")
    major, minor = torch.cuda.get_device_capability()
    build = tmp_path_factory.mktemp("kernel")
    cmake_build(build, f"-DCMAKE_CUDA_ARCHITECTURES={major}{minor}", targets=("rlens_hollow_kernel",))
    lib = ctypes.CDLL(str(build / "librlens_hollow_kernel.so"))
    i32, ptr = ctypes.c_int32, ctypes.c_void_p
    for fn in (lib.rlens_hollow_attention_f32, lib.rlens_hollow_attention_f16):
        fn.argtypes = [ptr] * 5 + [i32] * 7 + [ctypes.c_float, ptr]
        fn.restype = ctypes.c_int
    return torch, lib


GPU_CASES = [  # batch, heads, kv_heads, q_len, past, head_dim, span, window
    (2, 4, 2, 70, 0, 64, (10, 40), 8),
    (1, 8, 2, 300, 37, 128, (5, 256), 64),
    (1, 2, 1, 33, 12, 96, (0, 33), 1),
    (1, 4, 4, 50, 0, 32, (0, 0), 16),
    (1, 2, 2, 40, 3, 256, (30, 10), 100),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 1e-2)])
@pytest.mark.parametrize("case", GPU_CASES)
def test_kernel_matches_reference_on_gpu(kernel_lib, case, dtype, tol):
    torch, lib = kernel_lib
    batch, heads, kv_heads, q_len, past, dim, span, window = case
    gen = torch.Generator().manual_seed(0)
    tdtype = getattr(torch, dtype)
    q = torch.randn(batch, heads, q_len, dim, generator=gen).to("cuda", tdtype)
    k = torch.randn(batch, kv_heads, past + q_len, dim, generator=gen).to("cuda", tdtype)
    v = torch.randn(batch, kv_heads, past + q_len, dim, generator=gen).to("cuda", tdtype)
    span_t = torch.tensor(span, dtype=torch.int64, device="cuda")
    out = torch.empty_like(q)
    fn = lib.rlens_hollow_attention_f32 if dtype == "float32" else lib.rlens_hollow_attention_f16
    scale = dim ** -0.5
    stream = torch.cuda.current_stream().cuda_stream
    rc = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), span_t.data_ptr(), out.data_ptr(),
            batch, heads, kv_heads, q_len, past + q_len, dim, window, scale, stream)
    assert rc == 0
    torch.cuda.synchronize()
    expected = reference_hollow_attention(*(t.double().cpu().numpy() for t in (q, k, v)), span, window, scale)
    np.testing.assert_allclose(out.double().cpu().numpy(), expected, atol=tol, rtol=tol)
