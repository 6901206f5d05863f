"""Any size: external data decided from tensor sizes, weights streamed while the graph is built,
an initializer over 2 GiB, checkpoints in their own dtype, verification sized from the plan."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rlens.errors import BundleError, ModelError
from rlens.export import ExportConfig, bundle_from_plan
from rlens.export.bundle import EXTERNAL_DATA_LIMIT, save_onnx
from rlens.export.decoder import decoder_model, geometry
from rlens.export.graph import GraphBuilder, WeightFile, external_tensor, tensor_bytes
from rlens.export.verify import VerifySpan, decoder_golden, span_for_plan
from rlens.models import load_model
from rlens.plan import LayerPlan, Plan, empty_plan

BIG = 2**31 + 2**20  # bytes: over protobuf's 2 GiB


def _gather_model(table: TensorProto) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                          [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)], [table])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


def test_initializer_over_2gib(tmp_path):
    """A 2 GiB + 1 MiB initializer (a sparse file: no disk, no RAM): save_onnx keeps it external
    without serializing the model to measure it, ONNX Runtime maps it and reads its last row, and
    inline storage is refused with a clear error."""
    cols = 1024
    rows = BIG // (4 * cols)
    data = tmp_path / "big.onnx.data"
    with open(data, "wb") as f:
        f.truncate(4096 + rows * cols * 4)
    with open(data, "r+b") as f:  # mark the last row
        f.seek(4096 + (rows - 1) * cols * 4)
        f.write(np.arange(cols, dtype=np.float32).tobytes())
    model = _gather_model(external_tensor("table", (rows, cols), np.float32, data.name, 4096, rows * cols * 4))
    assert tensor_bytes(model) == rows * cols * 4 > EXTERNAL_DATA_LIMIT
    assert save_onnx(model, tmp_path / "big.onnx", None, limit=EXTERNAL_DATA_LIMIT) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < 4096
    sess = ort.InferenceSession(str(tmp_path / "big.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"ids": np.array([rows - 1, 0], dtype=np.int64)})[0]
    np.testing.assert_array_equal(got, np.stack([np.arange(cols, dtype=np.float32), np.zeros(cols, np.float32)]))
    with pytest.raises(BundleError, match="2 GiB"):
        save_onnx(model, tmp_path / "big.onnx", False)


def test_external_decided_from_tensor_sizes(tmp_path):
    """Inline tensors over the limit go external (the limit lowered so the test stays small)."""
    model = _gather_model(numpy_helper.from_array(np.ones((64, 64), np.float32), "table"))
    assert tensor_bytes(model) == 64 * 64 * 4
    assert save_onnx(onnx.ModelProto.FromString(model.SerializeToString()), tmp_path / "a.onnx", None,
                     limit=10_000) == ["a.onnx", "a.onnx.data"]
    assert save_onnx(model, tmp_path / "b.onnx", None, limit=20_000) == ["b.onnx"]
    assert not (tmp_path / "b.onnx.data").exists()


def test_weight_file_streams_cast_transposed_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(WeightFile, "CHUNK", 1000)  # many chunks
    w = np.random.default_rng(0).standard_normal((300, 70)).astype(np.float32)
    with WeightFile(tmp_path / "w.data") as wf:
        b = GraphBuilder("g", "fp16", wf)
        b.weight("small", np.ones(3, np.float32))  # under 1 KiB: stays inline
        b.weight("w_t", w.T, b.np_float)
        b.weight("again", w)
    small, wt, again = b.initializers
    assert small.data_location == TensorProto.DEFAULT and wt.data_location == TensorProto.EXTERNAL
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in (wt, again)]
    assert all(o % WeightFile.ALIGN == 0 for o in offsets)
    np.testing.assert_array_equal(numpy_helper.to_array(wt, str(tmp_path)), w.T.astype(np.float16))
    np.testing.assert_array_equal(numpy_helper.to_array(again, str(tmp_path)), w)


@pytest.fixture(scope="module")
def qwen():
    return load_model("tiny-qwen2-vl")


def _plan(info):
    return Plan(model=info, layers=(LayerPlan(1, hollow_window=4, ffn_keep=32),), ffn_mode="dynamic", ffn_probes=8)


def test_streamed_decoder_equals_inline(tmp_path, qwen):
    """Streaming to .data and reading back (a model under 2 GiB) gives the inline model's bytes."""
    plan = _plan(qwen.info())
    inline = decoder_model(qwen, plan).SerializeToString(deterministic=True)
    with WeightFile(tmp_path / "decoder.onnx.data") as wf:
        streamed = decoder_model(qwen, plan, weights=wf)
    assert all(t.data_location == TensorProto.EXTERNAL for t in streamed.graph.initializer if t.name.endswith("_t"))
    assert save_onnx(streamed, tmp_path / "decoder.onnx", None) == ["decoder.onnx"]
    assert (tmp_path / "decoder.onnx").read_bytes() == inline
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx"]


def test_verification_span_sized_from_plan(qwen):
    info = qwen.info()
    hollow = Plan(model=info, layers=(LayerPlan(0, hollow_window=256), LayerPlan(3, hollow_window=100)))
    spec = span_for_plan(hollow, 32768)
    assert spec.span == (3, 513) and spec.seq == 3 + 513 + 7
    probes = Plan(model=info, layers=(LayerPlan(0, ffn_keep=16),), ffn_mode="dynamic", ffn_probes=64)
    assert span_for_plan(probes, 32768).span[1] == 65
    capped = span_for_plan(hollow, 128)
    assert capped.seq + capped.steps <= 128 and capped.span[1] == 128 - 3 - 7 - 3
    assert span_for_plan(empty_plan(info), None).span == (3, 14)


def test_bundle_records_verified_span(tmp_path, qwen):
    out = bundle_from_plan(qwen, _plan(qwen.info()), tmp_path / "b", ExportConfig(vision=False))
    v = json.loads((out / "manifest.json").read_text())["verification"]
    assert v["decoder_inputs"] == {"sequence": 3 + 14 + 7, "visual_start": 3, "visual_length": 14,
                                   "decode_steps": 3}  # max(14, 2*4+1, 8+1)
    assert v["max_abs_diff"]["decoder"] <= 1e-4


def test_fp16_bundle_from_bf16_weights(tmp_path):
    """A bf16 checkpoint loads in bf16 (half the memory); its fp32 golden is exactly the fp32
    model's with the same (bf16-rounded) weights, and an fp16 bundle exports and verifies."""
    low = load_model("tiny-qwen2-vl", dtype="bf16")
    assert {p.dtype for p in low.model.parameters()} == {torch.bfloat16}
    ref = load_model("tiny-qwen2-vl")
    with torch.no_grad():
        for p in ref.model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    geo, plan = geometry(low), _plan(low.info())
    a = decoder_golden(low, plan, geo, VerifySpan(seq=20, span=(2, 12), steps=1))
    b = decoder_golden(ref, plan, geo, VerifySpan(seq=20, span=(2, 12), steps=1))
    assert {p.dtype for p in low.model.parameters()} == {torch.bfloat16}  # cast back after each layer
    for x, y in zip(a.logits + a.present[-1], b.logits + b.present[-1], strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
    out = bundle_from_plan(low, plan, tmp_path / "b", ExportConfig(dtype="fp16"), consume=True)
    assert low.model is None  # consumed: freed before ONNX Runtime verified the decoder
    m = json.loads((out / "manifest.json").read_text())
    assert m["dtype"] == "fp16" and m["verification"]["max_abs_diff"]["decoder"] <= 5e-2


def test_bad_load_dtype():
    with pytest.raises(ModelError, match="load-dtype"):
        load_model("tiny-qwen2-vl", dtype="int8")
