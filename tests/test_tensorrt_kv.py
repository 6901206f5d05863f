"""The TensorRT backend's KV double buffer, with a stubbed CUDA layer (no GPU, no TensorRT):
device allocations happen once, on the first call, at the engine's largest KV shape; every
later step only copies, on the runner's stream, alternating between the two buffers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rlens.runtime.backends.base import BackendError
from rlens.runtime.backends.tensorrt import DeviceTensor, KVDoubleBuffer, TensorRTBackend

MAX_SEQ, KV_HEADS, HEAD_DIM, HIDDEN, LAYERS = 64, 2, 8, 16, 2


class StubCuda:
    """polygraphy.cuda's surface that KVDoubleBuffer uses, counting mallocs and copies."""

    class MemcpyKind:
        DeviceToDevice = 3

    def __init__(self) -> None:
        self.mallocs: list[int] = []
        self.copies: list[tuple[int, int, int, int]] = []  # dst, src, nbytes, stream
        self.frees = 0
        stub = self

        class DeviceArray:
            @staticmethod
            def raw(shape):
                return Buffer(shape[0])

        class Buffer:
            def __init__(self, nbytes):
                stub.mallocs.append(nbytes)
                self.ptr, self.allocated_nbytes = 0x1000 * len(stub.mallocs), nbytes

            def free(self):
                stub.frees += 1

        class DeviceView:
            def __init__(self, ptr, shape, dtype):
                self.ptr, self.shape, self.np_dtype = ptr, tuple(shape), np.dtype(dtype)

        class Wrapper:
            def memcpy(self, dst, src, nbytes, kind, stream_ptr=None):
                assert kind == StubCuda.MemcpyKind.DeviceToDevice
                stub.copies.append((dst, src, nbytes, stream_ptr))

        self.DeviceArray, self.DeviceView, self._wrapper = DeviceArray, DeviceView, Wrapper()

    def wrapper(self):
        return self._wrapper


class FakeEngine:
    """Two profiles as rlens.engine.profiles makes them: prefill (past 0) and decode (seq 1)."""

    num_optimization_profiles = 2

    def get_tensor_profile_shape(self, name, profile):
        if name == "inputs_embeds":
            seq = MAX_SEQ if profile == 0 else 1
            return (1, 1, HIDDEN), (1, seq, HIDDEN), (1, seq, HIDDEN)
        past = 0 if profile == 0 else MAX_SEQ - 1
        return (1, KV_HEADS, 0, HEAD_DIM), (1, KV_HEADS, past, HEAD_DIM), (1, KV_HEADS, past, HEAD_DIM)

    def get_tensor_dtype(self, name):
        return "half"


class FakeRunner:
    """Returns device views of the present.* outputs at the runner's own (reused) addresses."""

    class stream:
        ptr = 0xABC

    def __init__(self, cuda: StubCuda) -> None:
        self.cuda, self.profiles = cuda, []

    def set_profile(self, index):
        self.profiles.append(index)

    def infer(self, feeds, copy_outputs_to_host=True):
        assert copy_outputs_to_host is False
        past = feeds["past_key_values.0.key"]
        total = past.shape[2] + feeds["inputs_embeds"].shape[1]
        out = {"logits": np.zeros((1, 1, 5), np.float32)}
        for i in range(LAYERS):
            for kind in ("key", "value"):
                out[f"present.{i}.{kind}"] = self.cuda.DeviceView(0x9000, (1, KV_HEADS, total, HEAD_DIM), np.float16)
        return out


def _backend(cuda: StubCuda) -> TensorRTBackend:
    backend = TensorRTBackend("decoder.onnx")
    backend._trt = type("trt", (), {"nptype": staticmethod(lambda t: np.float16)})
    backend._engine, backend._runner = FakeEngine(), FakeRunner(cuda)
    backend._profile, backend._step, backend._kv = 0, 0, KVDoubleBuffer(cuda)
    return backend


def _feeds(past, seq):
    feeds = {"inputs_embeds": np.zeros((1, seq, HIDDEN), np.float32)}
    for i in range(LAYERS):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = past.get(f"present.{i}.{kind}") if past else \
                np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float16)
    return feeds


def test_kv_buffers_are_allocated_once_and_decode_steps_allocate_nothing():
    cuda = StubCuda()
    backend = _backend(cuda)
    capacity = KV_HEADS * MAX_SEQ * HEAD_DIM * 2  # fp16, past + new tokens at the profiles' maxima
    per_step_mallocs, out = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no polygraphy deprecation (view.dtype) on any step
        for step in range(25):
            before = len(cuda.mallocs)
            out = backend.infer_impl(_feeds(out, 10 if step == 0 else 1))
            per_step_mallocs.append(len(cuda.mallocs) - before)
    assert per_step_mallocs[0] == 2 * 2 * LAYERS  # two buffers per present.* output, once
    assert per_step_mallocs[1:] == [0] * 24  # decode steps: no allocation at all
    assert cuda.mallocs == [capacity] * (4 * LAYERS)
    assert backend._runner.profiles == [1]  # prefill profile 0, then decode profile 1 for good
    assert len(cuda.copies) == 25 * 2 * LAYERS and {c[3] for c in cuda.copies} == {FakeRunner.stream.ptr}
    key = out["present.0.key"]
    assert isinstance(key, DeviceTensor) and key.shape == (1, KV_HEADS, 10 + 24, HEAD_DIM)
    assert key.dtype == np.float16
    dst = [c[0] for c in cuda.copies[:: 2 * LAYERS]]  # present.0.key's buffer per step
    assert dst[0] != dst[1] and dst[0::2] == [dst[0]] * 13 and dst[1::2] == [dst[1]] * 12  # alternating
    backend._runner.deactivate = lambda: None
    backend.deactivate_impl()
    assert cuda.frees == 4 * LAYERS


def test_kv_copy_larger_than_the_engine_maximum_is_refused():
    cuda = StubCuda()
    buffers = KVDoubleBuffer(cuda)
    buffers.allocate("present.0.key", 64)
    view = cuda.DeviceView(1, (1, 1, 40, 1), np.float16)
    buffers.copy("present.0.key", 0, view, (1, 1, 32, 1), np.dtype(np.float16), 7)
    with pytest.raises(BackendError, match="--max-seq"):
        buffers.copy("present.0.key", 1, view, (1, 1, 40, 1), np.dtype(np.float16), 7)
    assert len(cuda.mallocs) == 2
