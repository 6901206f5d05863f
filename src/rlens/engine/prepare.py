"""ONNX preparation for TensorRT (CPU only, no TensorRT needed).

Plugin-mode decoders carry an ONNX local function ``rlens.HollowAttention`` so that ONNX Runtime
can run them. TensorRT 10.3's ONNX parser has no plugin-override flag (it appears in 10.x later
and 11.x), so the function is removed from a copy of the model: the parser then finds no body
for the node and takes the ``HollowAttention`` plugin from the registry (by op type, with the
``plugin_version`` / ``plugin_namespace`` attributes).
"""

from __future__ import annotations

from pathlib import Path

from rlens.errors import BundleError
from rlens.plugins.spec import HOLLOW_ATTENTION


def strip_plugin_functions(model) -> int:
    """Remove the HollowAttention local function(s) from ``model`` in place; return the number of
    HollowAttention nodes left for the plugin."""
    spec = HOLLOW_ATTENTION
    keep = [f for f in model.functions if not (f.domain == spec.onnx_domain and f.name == spec.name)]
    del model.functions[:]
    model.functions.extend(keep)
    return sum(1 for n in model.graph.node if n.domain == spec.onnx_domain and n.op_type == spec.name)


def onnx_for_tensorrt(src: Path, dst: Path) -> int:
    """Write a TensorRT-ready copy of ``src`` to ``dst`` (external data kept beside it)."""
    import onnx

    try:
        model = onnx.load(str(src), load_external_data=True)
    except Exception as e:  # onnx raises several types for damaged files
        raise BundleError(f"cannot read {src}: {e}") from None
    count = strip_plugin_functions(model)
    large = model.ByteSize() > 2**31 - 2**26 if hasattr(model, "ByteSize") else True
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dst), save_as_external_data=large,
                    location=dst.name + ".data" if large else None, all_tensors_to_one_file=True)
    return count
