"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlens.runtime.backends.base import Backend, BackendError, TensorSpec

#: short names accepted by ``--providers`` (full ONNX Runtime names are accepted too)
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or one clear error saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("ONNX Runtime is not installed: pip install \"redundancylens[onnxruntime]\" (CPU) "
                           "or \"redundancylens[onnxruntime-gpu]\" (CUDA/TensorRT), never both") from None
    return onnxruntime


def resolve_providers(names: tuple[str, ...] | None) -> list[str]:
    """Full provider names, in order, checked against this ONNX Runtime build (CPU appended last)."""
    ort = import_onnxruntime()

    available = ort.get_available_providers()
    wanted = [PROVIDERS.get(n.lower(), n) for n in (names or ("cpu",))]
    missing = [n for n in wanted if n not in available]
    if missing:
        raise BackendError(f"ONNX Runtime here has no {', '.join(missing)}; available: {', '.join(available)} "
                           "(for CUDA/TensorRT: pip uninstall onnxruntime, then pip install \"redundancylens[onnxruntime-gpu]\")")
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    return wanted


MAX_THREADS = 256


class OnnxRuntimeBackend(Backend):
    """Options: ``threads`` (intra-op threads, 0 = ONNX Runtime's default), ``spin`` (False: idle
    worker threads sleep instead of spinning, so several sessions in one process do not steal each
    other's cores), ``prepack`` (False: no MLAS weight prepacking, see docs/runtime.md), ``profile`` (a file prefix: ONNX Runtime writes a JSON trace on :meth:`deactivate`)."""

    name = "onnxruntime"

    def activate_impl(self) -> None:
        ort = import_onnxruntime()

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = self.options.get("threads") or 0
        if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
            raise BackendError(f"threads must be an integer between 0 and {MAX_THREADS}, got {threads!r}")
        if threads:
            opts.intra_op_num_threads = threads
        if not self.options.get("prepack", True):
            opts.add_session_config_entry("session.disable_prepacking", "1")
        if not self.options.get("spin", True):
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if self.options.get("profile"):
            opts.enable_profiling = True
            opts.profile_file_prefix = str(self.options["profile"])
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=resolve_providers(self.providers))
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            if isinstance(e, BackendError):
                raise
            raise BackendError(f"ONNX Runtime cannot load {self.path}: {str(e).splitlines()[0]}") from None
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.profile_path: str | None = None

    def input_specs_impl(self) -> list[TensorSpec]:
        specs = []
        for i in self.session.get_inputs():
            dims = tuple(d if isinstance(d, int) else str(d) for d in i.shape)
            specs.append(TensorSpec(i.name, np.dtype(_ORT_TYPES.get(i.type, np.float32)), dims))
        return specs

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))

    def deactivate_impl(self) -> None:
        if self.options.get("profile"):
            self.profile_path = self.session.end_profiling()
        del self.session

    @property
    def active_providers(self) -> list[str]:
        self._require_active()
        return list(self.session.get_providers())

    def extra(self) -> dict[str, Any]:
        return {"providers": self.active_providers}
