"""rlens: RedundancyLens reductions for decoder-only multimodal LLMs, exported for the edge.

Importing this package (or any rlens module) has no side effects on torch or transformers.
"""

__version__ = "0.1.0"
