"""ONNX preparation for TensorRT (CPU only, no TensorRT needed).

Plugin-mode decoders carry an ONNX local function ``rlens.HollowAttention`` so that ONNX Runtime
can run them. TensorRT 10.3's ONNX parser has no plugin-override flag (it appears in 10.x later
and 11.x), so the function is removed before parsing: the parser then finds no body for the
node and takes the ``HollowAttention`` plugin from the registry (by op type, with the
``plugin_version`` / ``plugin_namespace`` attributes).

Nothing is written and no weight is read: the graph is loaded *without* its external data,
stripped, and serialized to bytes (a few MB: the weights stay in the bundle's ``.data`` file).
The builder hands these bytes to ``OnnxParser.parse(bytes, path)`` with ``path`` the bundle's
own ONNX file, so the parser resolves the external data relative to the bundle, where it is.
A graph whose weights are inline is below protobuf's 2 GiB limit by construction (it was read
from one file), so its bytes can always be serialized again; ``ModelProto.ByteSize()`` is never
called on a model holding more than that (it overflows above 2 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlens.errors import BundleError
from rlens.plugins.spec import HOLLOW_ATTENTION

@dataclass(frozen=True)
class PreparedOnnx:
    """A TensorRT-ready graph: ``model_bytes`` parsed with ``path`` as the model's location."""

    model_bytes: bytes
    path: Path  # the bundle's file: external data are resolved relative to its folder
    plugin_nodes: int  # HollowAttention nodes left for the plugin
    external_bytes: int  # weight bytes that stay in external data files (never loaded)


def strip_plugin_functions(model) -> int:
    """Remove the HollowAttention local function(s) from ``model`` in place; return the number of
    HollowAttention nodes left for the plugin."""
    spec = HOLLOW_ATTENTION
    keep = [f for f in model.functions if not (f.domain == spec.onnx_domain and f.name == spec.name)]
    del model.functions[:]
    model.functions.extend(keep)
    return sum(1 for n in model.graph.node if n.domain == spec.onnx_domain and n.op_type == spec.name)


def external_data_bytes(model) -> int:
    """Bytes of the initializers stored outside the ONNX file (from their ``length`` entries)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == 1:  # TensorProto.EXTERNAL
            entries = {e.key: e.value for e in tensor.external_data}
            total += int(entries.get("length", 0))
    return total


def onnx_for_tensorrt(src: str | Path) -> PreparedOnnx:
    """The graph of ``src`` without the HollowAttention function bodies, as bytes for the parser."""
    import onnx

    src = Path(src)
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # onnx raises several types for damaged files
        raise BundleError(f"cannot read {src}: {e}") from None
    count = strip_plugin_functions(model)
    return PreparedOnnx(model.SerializeToString(), src, count, external_data_bytes(model))

