"""Locate and load rlens' TensorRT plugin library (``librlens_trt_plugins.so``).

The library is built from ``plugins/`` with CMake (see docs/plugin.md). Nothing happens at
import: no library is loaded and neither torch nor tensorrt is imported.

TensorRT registers the plugin creators when it loads the library itself:
:func:`register_with` (``registry.load_library(path)``, once per process, failures raise) or
``trtexec --dynamicPlugins=...``;
:func:`load` only maps the library into the process.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from rlens.errors import RlensError

LIBRARY_NAME = "librlens_trt_plugins.so"
KERNEL_LIBRARY_NAME = "librlens_hollow_kernel.so"
ENV_VAR = "RLENS_PLUGIN_LIB"
#: the plugin-mode bundle shipped for ``rlens doctor`` (a checkout's plugins/doctor/)
DOCTOR_BUNDLE = Path(__file__).resolve().parents[3] / "plugins" / "doctor" / "bundle-hollow-fp16"

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parents[2]  # <repo>/src/rlens/plugins -> <repo>
BUILD_COMMAND = (
    f"cmake -S {_REPO_ROOT / 'plugins'} -B {_REPO_ROOT / 'build' / 'plugins'} -DTensorRT_ROOT=<TensorRT dir> "
    f"&& cmake --build {_REPO_ROOT / 'build' / 'plugins'} -j"
)


class PluginNotBuiltError(RlensError, FileNotFoundError):
    """The plugin shared library was not found: it has to be built on the target first."""


def search_paths(name: str = LIBRARY_NAME) -> list[Path]:
    """Candidate locations, in search order (the env var first when set)."""
    paths = []
    env = os.environ.get(ENV_VAR)
    if env and name == LIBRARY_NAME:
        env_path = Path(env)
        paths.append(env_path / name if env_path.is_dir() else env_path)
    paths += [_REPO_ROOT / "build" / "plugins" / name, _REPO_ROOT / "build" / name, _PACKAGE_DIR / name]
    return paths


def library_path(name: str = LIBRARY_NAME) -> Path:
    """Path of the built library; :class:`PluginNotBuiltError` with the build command if absent."""
    paths = search_paths(name)
    for path in paths:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in paths)
    raise PluginNotBuiltError(
        f"{name} not found (looked in: {tried}). Build it on the target with:\n  {BUILD_COMMAND}\n"
        f"or point {ENV_VAR} at an existing build."
    )


def load(name: str = LIBRARY_NAME) -> ctypes.CDLL:
    """ctypes-load the library with RTLD_GLOBAL and return its handle.

    This maps the library (and its kernel entry points) into the process; it does not register
    the plugin creators with TensorRT -- use :func:`register_with` for that.
    """
    return ctypes.CDLL(str(library_path(name)), mode=ctypes.RTLD_GLOBAL)


_REGISTERED: dict[tuple[int, str], object] = {}
_LOCK = threading.Lock()


def register_with(registry, path: str | os.PathLike[str] | None = None):
    """Register the plugins with a TensorRT plugin registry (``trt.get_plugin_registry()``), once
    per process and library: later calls return the first handle without loading again.

    TensorRT dlopens the library and calls its ``getCreators()``. A ``None`` handle (a library
    built against another TensorRT/CUDA, a creator already registered by another copy) or a
    registry that still has no ``HollowAttention`` creator afterwards raises :class:`RlensError`.
    Taking the registry as an argument keeps this module free of a tensorrt import.
    """
    from rlens.plugins.spec import HOLLOW_ATTENTION as spec

    lib = Path(path) if path else library_path()
    if not lib.is_file():
        raise PluginNotBuiltError(f"plugin library {lib} not found; build it with:\n  {BUILD_COMMAND}")
    key = (id(registry), str(lib.resolve()))
    with _LOCK:
        if key in _REGISTERED:
            return _REGISTERED[key]
        handle = registry.load_library(str(lib))
        if handle is None:
            raise RlensError(f"TensorRT could not load the plugin library {lib} (built against another "
                             "TensorRT/CUDA, or a HollowAttention creator is already registered from another "
                             "copy); see the TensorRT log above")
        if registry.get_creator(spec.name, spec.version, spec.namespace) is None:
            raise RlensError(f"{lib} loaded but TensorRT has no {spec.namespace}::{spec.name} v{spec.version} "
                             "creator: the library is not rlens' plugin library")
        _REGISTERED[key] = handle
        return handle


__all__ = [
    "ENV_VAR",
    "KERNEL_LIBRARY_NAME",
    "LIBRARY_NAME",
    "PluginNotBuiltError",
    "library_path",
    "load",
    "register_with",
    "search_paths",
]
