"""The build-engine edge: bundle/ -> bundle/engines/*.plan (TensorRT, built on the target).

``engine_from_bundle(bundle, EngineConfig(...))`` is the one entry point. TensorRT and
polygraphy are imported lazily, only when an engine is really built.
"""

from rlens.engine.build import EngineConfig, engine_from_bundle

__all__ = ["EngineConfig", "engine_from_bundle"]
