"""A small deterministic ONNX graph builder with hierarchical node names.

Every node gets a name from the current scope stack (``/decoder/layers.3/attn/MatMul``), its
outputs are named after the node, and constants are de-duplicated by value, so building the
same model twice gives byte-identical protobufs. :class:`FunctionBuilder` emits the same ops
into an ONNX local function body, where constants must be ``Constant`` nodes.

With a :class:`WeightFile`, every initializer of 1 KiB or more is streamed to the external-data
file as it is created (cast and transposed in chunks), so the ModelProto never holds the weights
and no whole-tensor copy is made: building a decoder needs the model's weights once, not twice.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT_TYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}
NP_FLOAT = {"fp32": np.float32, "fp16": np.float16}


class WeightFile:
    """One ONNX external-data file written while the graph is built (docs/bundle.md).

    ``add`` appends a tensor's bytes (offsets aligned to ``ALIGN`` so ONNX Runtime can map the
    file instead of copying it) and returns a TensorProto that points there. Use as a context
    manager, or call :meth:`close`.
    """

    THRESHOLD = 1024  # bytes: smaller tensors stay inline in the .onnx file
    ALIGN = 4096
    CHUNK = 16 << 20  # bytes converted at a time

    def __init__(self, path: str | Path, location: str | None = None) -> None:
        if sys.byteorder != "little":
            raise NotImplementedError("external data is written little-endian; this host is big-endian")
        self.path = Path(path)
        self.location = location or self.path.name
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self.offset = 0

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, name: str, array: np.ndarray, dtype: Any) -> onnx.TensorProto:
        """Write ``array`` cast to ``dtype`` (any strides: written in row chunks)."""
        assert self._file is not None, "WeightFile is closed"
        dtype = np.dtype(dtype)
        pad = -self.offset % self.ALIGN
        self._file.write(b"\0" * pad)
        self.offset += pad
        start = self.offset
        rows = array.reshape(1) if array.ndim == 0 else array
        step = max(1, self.CHUNK // max(1, rows[:1].size * dtype.itemsize))
        for i in range(0, rows.shape[0], step):
            chunk = np.ascontiguousarray(rows[i:i + step], dtype=dtype)
            self._file.write(memoryview(chunk).cast("B"))
            self.offset += chunk.nbytes
        return external_tensor(name, array.shape, dtype, self.location, start, self.offset - start)


def external_tensor(name: str, shape: Sequence[int], dtype: Any, location: str, offset: int,
                    length: int) -> onnx.TensorProto:
    """A TensorProto whose data lies in ``location`` (ONNX external data: location/offset/length)."""
    t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                         dims=list(shape), data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data in ``model`` (initializers and tensor attributes, subgraphs and
    functions included; inline or external), from the tensors' sizes, never serializing."""
    return sum(_data_bytes(t) for t in all_tensors(model))


def _data_bytes(t: onnx.TensorProto) -> int:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        return int(info.get("length", 0))
    if t.raw_data:
        return len(t.raw_data)
    itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type != onnx.TensorProto.STRING else 1
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    graphs = [model.graph]
    nodes: list[onnx.NodeProto] = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            yield from (s.values for s in g.sparse_initializer)
            nodes.extend(g.node)
            continue
        for a in nodes.pop().attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            graphs.extend([a.g] if a.HasField("g") else [])
            graphs.extend(a.graphs)


class GraphBuilder:
    """Collects nodes and initializers; ``op`` returns the output name(s) of the node it adds."""

    def __init__(self, root: str, dtype: str = "fp32", weights: WeightFile | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.weights = weights
        self.dtype = dtype
        self.onnx_float = FLOAT_TYPES[dtype]
        self.np_float = NP_FLOAT[dtype]
        self._scope: list[str] = [root]
        self._used: set[str] = set()
        self._consts: dict[tuple, str] = {}

    # ---- naming ------------------------------------------------------------------------------
    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _unique(self, base: str) -> str:
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def node_name(self, label: str) -> str:
        return self._unique("/" + "/".join(self._scope) + "/" + label)

    # ---- nodes -------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, label: str | None = None,
           domain: str = "", **attrs: Any) -> Any:
        name = self.node_name(label or op_type)
        outs = [f"{name}/output_{i}" for i in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outs, name=name, domain=domain or None, **attrs)
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    def output(self, x: str, name: str) -> str:
        """Route ``x`` to a graph output called ``name`` (an Identity node)."""
        node = helper.make_node("Identity", [x], [name], name=self.node_name(name))
        self.nodes.append(node)
        return name

    def cast(self, x: str, to: str) -> str:
        """Cast between the graph's float type and fp32 (a no-op when they agree)."""
        if self.dtype == "fp32":
            return x
        return self.op("Cast", [x], to=TensorProto.FLOAT if to == "fp32" else self.onnx_float)

    # ---- constants and weights ---------------------------------------------------------------
    def const(self, value: Any, dtype: Any = np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())
        if key not in self._consts:
            self._consts[key] = self._make_const(arr)
        return self._consts[key]

    def fconst(self, value: Any) -> str:
        """A constant of the graph's float type."""
        return self.const(value, self.np_float)

    def _make_const(self, arr: np.ndarray) -> str:
        return self._initializer(self._unique(f"const_{len(self._consts)}"), arr, arr.dtype)

    def weight(self, name: str, array: np.ndarray, dtype: Any = None) -> str:
        """An initializer from ``array`` (any strides, e.g. a transposed view) cast to ``dtype``
        (default: its own); with a :class:`WeightFile` it is streamed there, never held."""
        return self._initializer(self._unique(name), array, array.dtype if dtype is None else dtype)

    def _initializer(self, name: str, array: np.ndarray, dtype: Any) -> str:
        dtype = np.dtype(dtype)
        if self.weights is not None and array.size * dtype.itemsize >= self.weights.THRESHOLD:
            self.initializers.append(self.weights.add(name, array, dtype))
        else:
            self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype, order="C"), name))
        return name

    # ---- control flow ------------------------------------------------------------------------
    def subgraph(self) -> GraphBuilder:
        """A builder for an If branch: its own node list, the same names in use, the same scope;
        constants and weights stay initializers of the main graph (read from the outer scope)."""
        child = copy.copy(self)
        child.nodes = []
        child._scope = list(self._scope)
        return child

    def if_(self, cond: str, then_fn: Any, else_fn: Any, types: Sequence[int], label: str = "If") -> list[str]:
        """An ``If`` node; ``then_fn(b)`` / ``else_fn(b)`` build a branch with the builder they get and
        return its output names (as many as ``types``, the ONNX element types)."""
        name = self.node_name(label)
        branches = {}
        with self.scope(name.rsplit("/", 1)[1]):
            for tag, fn in (("then", then_fn), ("else", else_fn)):
                with self.scope(tag):
                    sub = self.subgraph()
                    outs = list(fn(sub))
                    if len(outs) != len(types):
                        raise ValueError(f"{tag} branch gives {len(outs)} outputs, expected {len(types)}")
                    names = []
                    for i, o in enumerate(outs):
                        names.append(f"{name}/{tag}/output_{i}")
                        sub.nodes.append(helper.make_node("Identity", [o], [names[-1]],
                                                          name=sub.node_name(f"output_{i}")))
                    branches[tag] = helper.make_graph(
                        sub.nodes, f"{name}/{tag}", [],
                        [helper.make_tensor_value_info(n, t, None) for n, t in zip(names, types, strict=True)])
        outs = [f"{name}/output_{i}" for i in range(len(types))]
        self.nodes.append(helper.make_node("If", [cond], outs, name=name, then_branch=branches["then"],
                                           else_branch=branches["else"]))
        return outs

    # ---- helpers for common patterns ---------------------------------------------------------
    def dim(self, tensor: str, axis: int) -> str:
        """Scalar-shaped [1] int64 size of ``tensor`` along ``axis``."""
        if axis < 0:
            raise ValueError("dim() takes a non-negative axis")
        return self.op("Shape", [tensor], start=axis, end=axis + 1)

    def scalar(self, tensor_1: str) -> str:
        return self.op("Squeeze", [tensor_1, self.const([0])])

    def vec(self, *scalars: str) -> str:
        """Concatenate [1]-shaped int64 tensors into a shape vector."""
        return self.op("Concat", list(scalars), axis=0)

    def reshape(self, x: str, shape: str) -> str:
        return self.op("Reshape", [x, shape], allowzero=1)

    def slice(self, x: str, start: str, end: str, axis: int) -> str:
        return self.op("Slice", [x, start, end, self.const([axis])])


class FunctionBuilder(GraphBuilder):
    """Builds an ONNX local function body: constants become ``Constant`` nodes."""

    def __init__(self, root: str, dtype: str = "fp32") -> None:
        super().__init__(root, dtype)

    def subgraph(self) -> GraphBuilder:
        """Constants are nodes here, so a branch makes its own (not shared with other scopes)."""
        child = super().subgraph()
        child._consts = {}
        return child

    def _make_const(self, arr: np.ndarray) -> str:
        return self.op("Constant", [], label="Constant", value=numpy_helper.from_array(arr))

    def attr_const(self, attr: str, kind: int, label: str) -> str:
        """A ``Constant`` whose value is the function attribute ``attr`` (scalar)."""
        name = self.node_name(label)
        field = {onnx.AttributeProto.INT: "value_int", onnx.AttributeProto.FLOAT: "value_float"}[kind]
        node = helper.make_node("Constant", [], [f"{name}/output_0"], name=name)
        node.attribute.append(helper.make_attribute_ref(field, kind))
        node.attribute[-1].ref_attr_name = attr
        self.nodes.append(node)
        return f"{name}/output_0"
