"""Backends: name -> runner class, imported lazily so a missing backend costs nothing.

``onnxruntime`` (CPU, CUDA and TensorRT execution providers) and ``tensorrt`` (the engines
``rlens build-engine`` wrote; TensorRT and polygraphy are imported when a runner activates).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from rlens.runtime.backends.base import Backend, BackendError, TensorSpec

#: backend name -> "module:class" (plain data; a new backend is one file and one line here)
BACKENDS: dict[str, str] = {
    "onnxruntime": "rlens.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "rlens.runtime.backends.tensorrt:TensorRTBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The runner class of backend ``name``; a clear :class:`BackendError` when it is not here."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}")
    module, cls = BACKENDS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise BackendError(f"backend {name!r} needs the Python package {e.name!r}, which is not installed") from None
        raise BackendError(f"backend {name!r} is not available in this build of rlens") from None
    return getattr(mod, cls)


def make_backend(name: str, path: str | Path, providers: tuple[str, ...] | None = None, **options: Any) -> Backend:
    return backend_class(name)(path, providers, **options)


__all__ = ["BACKENDS", "Backend", "BackendError", "TensorSpec", "backend_class", "make_backend"]
