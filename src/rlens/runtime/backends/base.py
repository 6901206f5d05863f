"""The backend interface: one runner per graph, Polygraphy-style lifecycle.

``activate()`` loads the graph (ONNX Runtime session, TensorRT engine + context), ``infer(feeds)``
runs it, ``deactivate()`` frees it. The public methods check their inputs and state and then
call the ``*_impl`` methods a backend implements, so a new backend is one file (see
``onnxruntime.py``) registered in :data:`rlens.runtime.backends.BACKENDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rlens.errors import InputError, RlensError


class BackendError(RlensError):
    """A backend that is not available here, or asked for an execution provider it lacks."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of one graph input; symbolic dims are strings."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    def check(self, value: np.ndarray, graph: str) -> None:
        if value.dtype != self.dtype:
            raise InputError(f"{graph}: input {self.name} has dtype {value.dtype}, the graph takes {self.dtype}")
        if value.ndim != len(self.shape):
            raise InputError(f"{graph}: input {self.name} has shape {value.shape}, the graph takes rank "
                             f"{len(self.shape)} {list(self.shape)}")
        for got, want in zip(value.shape, self.shape):
            if isinstance(want, int) and want >= 0 and got != want:
                raise InputError(f"{graph}: input {self.name} has shape {value.shape}, the graph was exported "
                                 f"for {list(self.shape)}")


class Backend:
    """Base class of the runners. Subclasses implement the ``*_impl`` methods only."""

    name: ClassVar[str] = "base"

    def __init__(self, path: str | Path, providers: tuple[str, ...] | None = None, *,
                 bundle: Any = None, graph: str | None = None, **options: Any) -> None:
        self.path = Path(path)
        self.providers = providers
        #: the checked bundle manifest (:class:`rlens.runtime.manifest.Manifest`) and this runner's graph
        #: name, given by the Session; a backend reads what it needs from them rather than reading the
        #: bundle itself (the backends package imports nothing from ``rlens.runtime``)
        self.bundle = bundle
        self.graph = graph
        self.options = options
        self.is_active = False
        self._inputs: dict[str, TensorSpec] = {}

    # ---- lifecycle -----------------------------------------------------------------------------
    def activate(self) -> Backend:
        if self.is_active:
            raise BackendError(f"{self.name} runner for {self.path.name} is already active")
        self.activate_impl()
        self._inputs = {s.name: s for s in self.input_specs_impl()}
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # ---- running -------------------------------------------------------------------------------
    @property
    def inputs(self) -> dict[str, TensorSpec]:
        self._require_active()
        return dict(self._inputs)

    def infer(self, feeds: dict[str, np.ndarray], check: bool = True) -> dict[str, np.ndarray]:
        """Run the graph on ``feeds`` (exactly its inputs); returns every output by name."""
        self._require_active()
        if check:
            self._check(feeds)
        return self.infer_impl(feeds)

    def _require_active(self) -> None:
        if not self.is_active:
            raise BackendError(f"{self.name} runner for {self.path.name} is not active; call activate() first")

    def _check(self, feeds: dict[str, np.ndarray]) -> None:
        missing = sorted(set(self._inputs) - set(feeds))
        extra = sorted(set(feeds) - set(self._inputs))
        if missing or extra:
            raise InputError(f"{self.path.name}: missing inputs {missing}, unexpected inputs {extra}")
        for name, spec in self._inputs.items():
            value = feeds[name]
            # Arrays that stay on a device (e.g. the TensorRT backend's KV cache) carry shape,
            # ndim and a numpy dtype: checked as they are, never copied to the host.
            if not all(hasattr(value, a) for a in ("shape", "ndim", "dtype")):
                value = np.asarray(value)
            spec.check(value, self.path.name)

    # ---- what a backend implements -------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def input_specs_impl(self) -> list[TensorSpec]:
        raise NotImplementedError

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError
