"""TensorRT backend: runs the engines ``rlens build-engine`` wrote into ``bundle/engines/``.

The runner for ``bundle/<graph>.onnx`` loads ``bundle/engines/<graph>.plan`` after checking, with
the manifest's ``engines`` record, that it was built for this GPU and this TensorRT version.
Plugin-mode bundles load ``librlens_trt_plugins.so`` first. Each call picks the optimization
profile whose bounds hold the feed's shapes (decoder: prefill, then decode) and runs through
polygraphy's ``TrtRunner``.

The KV cache stays on the GPU: ``present.*`` outputs are copied device-to-device, on the
runner's stream, into two alternating buffers per output (the runner reuses its own output
memory on the next call, which also reads the previous step's cache) and handed to the session
as :class:`DeviceTensor`s, which it feeds back as ``past_key_values.*``; only ``logits`` (and the
vision/embedding outputs) come to the host. The buffers are allocated once, at the engine's
largest KV shape (past + sequence at the profiles' maxima), on the first call that returns a
cache: a decode step allocates nothing (tests/test_tensorrt_kv.py counts it with a stubbed CUDA
layer). Never run in this workplace (no GPU, no TensorRT): docs/jetson.md lists the GPU tests
and ``rlens doctor`` runs the checks on the target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlens.attention_modes import needs_plugin
from rlens.runtime.backends.base import Backend, BackendError, TensorSpec


class DeviceTensor:
    """A tensor that stays in GPU memory between calls: shape, numpy dtype and the device view."""

    def __init__(self, view: Any, dtype: np.dtype) -> None:
        self.view = view
        self.shape = tuple(int(d) for d in view.shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.view.numpy()
        return arr if dtype is None else arr.astype(dtype)


class KVDoubleBuffer:
    """Two raw device buffers per KV output, allocated once at a fixed capacity; each step copies
    the runner's output into one of them and returns a view of its current shape.

    ``cuda`` is polygraphy's ``cuda`` module (``DeviceArray.raw``, ``DeviceView``, ``wrapper()``,
    ``MemcpyKind``), passed in so a test can count allocations with a stub.
    """

    def __init__(self, cuda: Any) -> None:
        self._cuda = cuda
        self._buffers: dict[str, tuple[Any, Any]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    def allocate(self, name: str, nbytes: int) -> None:
        self._buffers[name] = (self._cuda.DeviceArray.raw((nbytes,)), self._cuda.DeviceArray.raw((nbytes,)))

    def copy(self, name: str, slot: int, src: Any, shape: tuple[int, ...], dtype: np.dtype, stream_ptr: int) -> Any:
        dst = self._buffers[name][slot]
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > dst.allocated_nbytes:
            raise BackendError(f"{name} of shape {shape} exceeds the engine's maximum KV size; "
                               "rebuild the engine with a larger --max-seq")
        self._cuda.wrapper().memcpy(dst=dst.ptr, src=src.ptr, nbytes=nbytes,
                                    kind=self._cuda.MemcpyKind.DeviceToDevice, stream_ptr=stream_ptr)
        return self._cuda.DeviceView(dst.ptr, shape, dtype)

    def free(self) -> None:
        for pair in self._buffers.values():
            for buf in pair:
                buf.free()
        self._buffers.clear()


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
        from polygraphy.backend import trt as _  # noqa: F401
    except ImportError as e:
        raise BackendError(f"backend 'tensorrt' needs TensorRT and polygraphy ({e}); install them on the target "
                           "(pip install 'redundancylens[tensorrt]' on x86, JetPack's python3-libnvinfer on Jetson)") from None
    return trt


class TensorRTBackend(Backend):
    """Options: ``plugin_lib`` (path of librlens_trt_plugins.so; default: rlens.plugins.library_path())."""

    name = "tensorrt"

    def activate_impl(self) -> None:
        trt = _import_tensorrt()
        from polygraphy.backend.trt import TrtRunner

        from rlens.targets import check_engine_record, current_target

        typed = self.bundle
        if typed is None or self.graph is None:
            raise BackendError("the tensorrt runner reads its engine from the bundle's manifest: open the bundle "
                               "with rlens.runtime.Session.from_bundle(path, backend='tensorrt')")
        bundle, graph, manifest = typed.folder, self.graph, typed.raw
        record = (manifest.get("engines") or {}).get(graph)
        if record is None:
            raise BackendError(f"{bundle} has no TensorRT engine for {graph}; build it on this GPU with "
                               f"`rlens build-engine {bundle}`")
        check_engine_record(record, current_target(), graph)
        if needs_plugin(manifest.get("attention")):
            self._load_plugin(trt)
        logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(typed.path(str(record["file"])).read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT could not deserialize {record['file']} (built by another version?)")
        self._trt = trt
        self._runner = TrtRunner(self._engine)
        self._runner.activate()
        self._profile = 0
        self._step = 0
        from polygraphy import cuda

        self._kv = KVDoubleBuffer(cuda)

    def _load_plugin(self, trt: Any) -> None:
        from rlens import plugins

        plugins.register_with(trt.get_plugin_registry(), self.options.get("plugin_lib"))

    def input_specs_impl(self) -> list[TensorSpec]:
        trt, eng = self._trt, self._engine
        specs = []
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            if eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(int(d) for d in eng.get_tensor_shape(name))
                specs.append(TensorSpec(name, np.dtype(trt.nptype(eng.get_tensor_dtype(name))), shape))
        return specs

    def _pick_profile(self, feeds: dict[str, np.ndarray]) -> int:
        for p in range(self._engine.num_optimization_profiles):
            if all(self._fits(name, np.shape(v), p) for name, v in feeds.items()):
                return p
        shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
        raise BackendError(f"no optimization profile of {self.path.stem}'s engine holds these shapes {shapes}; "
                           "rebuild with a larger --max-seq / --max-visual-tokens")

    def _fits(self, name: str, shape: tuple[int, ...], profile: int) -> bool:
        lo, _, hi = self._engine.get_tensor_profile_shape(name, profile)
        return len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))

    def infer_impl(self, feeds: dict[str, Any]) -> dict[str, Any]:
        profile = self._pick_profile(feeds)
        if profile != self._profile:
            self._runner.set_profile(profile)
            self._profile = profile
        device_feeds = {k: v.view if isinstance(v, DeviceTensor) else v for k, v in feeds.items()}
        out = self._runner.infer(device_feeds, copy_outputs_to_host=False)
        self._step += 1
        result = {}
        for name, view in out.items():
            if name.startswith("present."):
                result[name] = self._keep_on_device(name, view)
            else:
                result[name] = view.numpy() if hasattr(view, "numpy") else np.asarray(view)
        return result

    def _keep_on_device(self, name: str, view: Any) -> DeviceTensor:
        """Copy ``view`` into this step's buffer of ``name`` (the other one holds the cache the
        call just read), device to device on the runner's stream."""
        if name not in self._kv:
            self._kv.allocate(name, self._kv_capacity(name))
        dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
        dst = self._kv.copy(name, self._step % 2, view, tuple(int(d) for d in view.shape), dtype,
                            self._runner.stream.ptr)
        return DeviceTensor(dst, dtype)

    def _kv_capacity(self, name: str) -> int:
        """Bytes of the largest ``present.*`` tensor any profile allows: the past input's maximum
        with its sequence axis grown by the profile's maximal new tokens."""
        past = "past_key_values." + name[len("present."):]
        itemsize = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name))).itemsize
        best = 0
        for p in range(self._engine.num_optimization_profiles):
            hi = list(self._engine.get_tensor_profile_shape(past, p)[2])
            hi[2] += int(self._engine.get_tensor_profile_shape("inputs_embeds", p)[2][1])
            best = max(best, int(np.prod(hi)) * itemsize)
        return best

    def deactivate_impl(self) -> None:
        self._runner.deactivate()
        self._kv.free()
        del self._runner, self._engine

    def extra(self) -> dict[str, Any]:
        return {"tensorrt": self._trt.__version__}
