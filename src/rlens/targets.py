"""Which GPU and TensorRT an engine is for, and the check that refuses a mismatch (shared by the
engine builder and the runtime; imports tensorrt only when asked for the current target).

Engines are built on the target and never move between GPUs or TensorRT versions (DESIGN §6).
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlens.errors import BundleError


CU_ATTR_CC_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR (cuda.h)
CU_ATTR_CC_MINOR = 76
#: compute capability of each Jetson family, by the name its device tree gives
JETSON_CC = {"Thor": "11.0", "Orin": "8.7", "Xavier": "7.2"}


@dataclass(frozen=True)
class Target:
    gpu: str
    compute_capability: str
    tensorrt: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def current_target() -> Target:
    """The GPU of device 0 and the importable TensorRT's version (imports tensorrt)."""
    import tensorrt as trt

    name, cc = _gpu_name_and_cc()
    return Target(gpu=name, compute_capability=cc, tensorrt=trt.__version__)


def _gpu_name_and_cc() -> tuple[str, str]:
    """Name and compute capability of device 0, from the first source that answers: the CUDA
    driver (libcuda.so.1, present on every CUDA install, JetPack included: no Python package),
    cuda-python, nvidia-smi (desktop drivers only), or the Jetson device tree."""
    for probe in (_from_libcuda, _from_cuda_python, _from_nvidia_smi, _from_jetson_device_tree):
        found = probe()
        if found is not None:
            return found
    raise BundleError("cannot identify the GPU: no CUDA driver (libcuda.so.1) answered, cuda-python and "
                      "nvidia-smi are absent and this is not a Jetson (/proc/device-tree/model)")


def _from_libcuda() -> tuple[str, str] | None:
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    ok = (cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
          and cuda.cuDeviceGetName(name, 256, dev) == 0
          and cuda.cuDeviceGetAttribute(ctypes.byref(major), CU_ATTR_CC_MAJOR, dev) == 0
          and cuda.cuDeviceGetAttribute(ctypes.byref(minor), CU_ATTR_CC_MINOR, dev) == 0)
    return (name.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}") if ok else None


def _from_cuda_python() -> tuple[str, str] | None:
    try:  # cuda-python 12.x (the tensorrt extra pins <13: a JetPack 6 driver cannot run 13.x)
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def _from_nvidia_smi() -> tuple[str, str] | None:
    try:  # desktop drivers ship nvidia-smi (JetPack 5/6 does not)
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cc = (s.strip() for s in out.strip().split(",", 1))
        return name, cc
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _from_jetson_device_tree(model_file: str = "/proc/device-tree/model") -> tuple[str, str] | None:
    """Jetson boards name themselves in the device tree ("NVIDIA Jetson AGX Orin Developer Kit")."""
    try:
        model = Path(model_file).read_bytes().decode(errors="replace").strip("\x00 \n")
    except OSError:
        return None
    for key, cc in JETSON_CC.items():
        if key in model:
            return model, cc
    return None


def check_engine_record(record: dict[str, Any], current: Target, name: str) -> None:
    """Refuse an engine built for another GPU or TensorRT version, with one clear line."""
    built = Target(str(record.get("gpu")), str(record.get("compute_capability")), str(record.get("tensorrt")))
    if built.tensorrt != current.tensorrt:
        raise BundleError(f"engine {name} was built with TensorRT {built.tensorrt}, this is TensorRT "
                          f"{current.tensorrt}: rebuild it here with `rlens build-engine`")
    if (built.gpu, built.compute_capability) != (current.gpu, current.compute_capability):
        raise BundleError(f"engine {name} was built for {built.gpu} (sm {built.compute_capability}), this GPU is "
                          f"{current.gpu} (sm {current.compute_capability}): rebuild it here with `rlens build-engine`")
