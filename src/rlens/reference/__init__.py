"""The PyTorch reference of the reductions (DESIGN §3.1, §3.2): the golden for ONNX and TensorRT."""

from rlens.reference.ffn import ProbeFFN, probe_positions, top_k_lower_index_first
from rlens.reference.hollow import hollow_allowed, hollow_attention
from rlens.reference.patch import SpanState, reduced
from rlens.reference.tokens import PruneState, kept_rows

__all__ = [
    "ProbeFFN",
    "PruneState",
    "SpanState",
    "hollow_allowed",
    "hollow_attention",
    "kept_rows",
    "probe_positions",
    "reduced",
    "top_k_lower_index_first",
]
