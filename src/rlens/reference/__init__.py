"""The PyTorch reference of the reductions (DESIGN §3.1, §3.2): the golden for ONNX and TensorRT."""

from rlens.reference.ffn import ProbeFFN, probe_positions, top_k_lower_index_first
from rlens.reference.hollow import hollow_allowed, hollow_attention
from rlens.reference.patch import SpanState, reduced

__all__ = [
    "ProbeFFN",
    "SpanState",
    "hollow_allowed",
    "hollow_attention",
    "probe_positions",
    "reduced",
    "top_k_lower_index_first",
]
