"""Weight-only quantization of decoder.onnx (``--weights int8|int4``), after the graph is built.

Every ``MatMul`` whose weight is an initializer used only by MatMuls is quantized block-wise along
its input dimension K (symmetric, ``block_size`` rows per scale). The static FFN's kept/rest
initializers are separate weights, so the reduction still costs no extra bytes; a dynamic FFN's
gate/up/down stay float (the graph gathers rows of them at run time).

- ``--ops ort``: ``com.microsoft::MatMulNBits`` through ONNX Runtime's own quantizer
  (``onnxruntime.quantization.matmul_nbits_quantizer``; the settings onnxruntime-genai's builder
  uses on CPU: symmetric, block 32, ``accuracy_level`` 4 = int8 activations in the kernel).
- ``--ops standard`` (TensorRT's strongly typed networks): ``DequantizeLinear -> MatMul`` with an
  int4 weight, block-quantized along K (opset 21), written by the same quantizer in its QDQ form;
  int8 as per-output-channel ``DequantizeLinear`` (TensorRT quantizes int8 weights per channel,
  not per block). Needs ``--opset 21``.
Calibration is not involved: it runs on the float model.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

BITS = {"int8": 8, "int4": 4}


def quantizable_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Top-level MatMuls with a 2-D initializer weight that nothing but MatMuls reads."""
    inits = {t.name: t for t in model.graph.initializer}
    users: Counter[str] = Counter()
    matmul_users: Counter[str] = Counter()
    for node in _all_nodes(model.graph):
        for name in node.input:
            users[name] += 1
            if node.op_type == "MatMul":
                matmul_users[name] += 1
    return [n for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
            and users[n.input[1]] == matmul_users[n.input[1]]]


def _all_nodes(graph: onnx.GraphProto) -> Any:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


def quantize_decoder(model: onnx.ModelProto, weights: str, ops: str, block_size: int = 32,
                     accuracy_level: int = 4, keep_float: tuple[str, ...] = (),
                     symmetric: bool = True) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """(quantized model, manifest record). ``weights`` "int8" | "int4"; ``ops`` "ort" | "standard";
    ``keep_float``: MatMuls whose node name contains one of these stay float (e.g. "lm_head")."""
    targets = [n for n in quantizable_matmuls(model) if not any(k in n.name for k in keep_float)]
    names = {n.name for n in targets}
    before = _weight_bytes(model)
    if ops == "standard" and weights == "int8":
        model = _int8_per_channel_qdq(model, targets)
        fmt = "DequantizeLinear int8, per output channel"
    else:
        model = _ort_quantizer(model, BITS[weights], block_size, accuracy_level, ops, names, symmetric)
        fmt = ("com.microsoft::MatMulNBits" if ops == "ort" else "DequantizeLinear int4, block along K")
    record = {"weights": weights, "format": fmt, "symmetric": symmetric or fmt.endswith("channel"),
              "block_size": None if fmt.endswith("channel") else block_size,
              "accuracy_level": accuracy_level if ops == "ort" else None,
              "matmuls": len(names), "kept_float": list(keep_float), "weight_bytes": _weight_bytes(model), "float_weight_bytes": before}
    log.info("weights %s: %d MatMuls quantized (%s), %d -> %d bytes", weights, len(names), fmt, before,
             record["weight_bytes"])
    return model, record


def _ort_quantizer(model: onnx.ModelProto, bits: int, block_size: int, accuracy_level: int, ops: str,
                   include: set[str], symmetric: bool = True) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    qdq = ops == "standard"
    if qdq and model.opset_import[0].version < 21:
        raise ValueError("int4 DequantizeLinear with blocks needs opset 21")
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                          accuracy_level=None if qdq else accuracy_level,
                                          quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                                          op_types_to_quantize=("MatMul",), bits=bits)
    exclude = [n.name for n in _all_nodes(model.graph) if n.op_type == "MatMul" and n.name not in include]
    with _quiet("onnxruntime.quantization"):
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=config.accuracy_level, nodes_to_exclude=exclude,
                                         algo_config=config)
        quantizer.process()
    return quantizer.model.model


@contextmanager
def _quiet(prefix: str) -> Iterator[None]:
    """ONNX Runtime's quantizer logs every node at INFO: raise its loggers to WARNING, then restore."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(prefix)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _int8_per_channel_qdq(model: onnx.ModelProto, targets: list[onnx.NodeProto]) -> onnx.ModelProto:
    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    new_nodes: dict[str, onnx.NodeProto] = {}
    for node in targets:
        name = node.input[1]
        if name in new_nodes:
            continue
        w = numpy_helper.to_array(model.graph.initializer[inits[name]]).astype(np.float32)
        scale = np.maximum(np.abs(w).max(axis=0), np.float32(1e-12)) / np.float32(127)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        model.graph.initializer[inits[name]].CopyFrom(numpy_helper.from_array(q, name + "_q8"))
        model.graph.initializer.append(numpy_helper.from_array(scale.astype(w.dtype), name + "_scale"))
        new_nodes[name] = helper.make_node("DequantizeLinear", [name + "_q8", name + "_scale"], [name],
                                           name=node.name + "/DequantizeLinear", axis=1)
    order = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(list(new_nodes.values()) + order)
    return model


def _weight_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0))
        else:
            total += len(t.raw_data) if t.raw_data else numpy_helper.to_array(t).nbytes
    return total
