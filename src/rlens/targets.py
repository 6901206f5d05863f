"""Which GPU and TensorRT an engine is for, and the check that refuses a mismatch (shared by the
engine builder and the runtime; imports tensorrt only when asked for the current target).

Engines are built on the target and never move between GPUs or TensorRT versions (DESIGN §6).
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from rlens.errors import BundleError


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
    try:  # cuda-python (the tensorrt extra installs it)
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]
        except ImportError:
            cudart = None
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return name.strip("\x00 "), f"{props.major}.{props.minor}"
    try:  # desktop drivers ship nvidia-smi (Jetson's JetPack 5/6 does not)
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cc = (s.strip() for s in out.strip().split(",", 1))
        return name, cc
    except (OSError, subprocess.SubprocessError, ValueError):
        raise BundleError("cannot identify the GPU: install cuda-python (pip install cuda-python) or nvidia-smi") from None


def check_engine_record(record: dict[str, Any], current: Target, name: str) -> None:
    """Refuse an engine built for another GPU or TensorRT version, with one clear line."""
    built = Target(str(record.get("gpu")), str(record.get("compute_capability")), str(record.get("tensorrt")))
    if built.tensorrt != current.tensorrt:
        raise BundleError(f"engine {name} was built with TensorRT {built.tensorrt}, this is TensorRT "
                          f"{current.tensorrt}: rebuild it here with `rlens build-engine`")
    if (built.gpu, built.compute_capability) != (current.gpu, current.compute_capability):
        raise BundleError(f"engine {name} was built for {built.gpu} (sm {built.compute_capability}), this GPU is "
                          f"{current.gpu} (sm {current.compute_capability}): rebuild it here with `rlens build-engine`")
