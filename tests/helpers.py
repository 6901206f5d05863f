"""Helpers shared by the tests (plain functions; fixtures live in conftest.py). Tests import this
module, never another test module, conftest or a benchmark script."""

from __future__ import annotations

import numpy as np

from rlens.presets import PRESETS

PRESET_NAMES = list(PRESETS)


def sample_image(seed: int = 0, size: tuple[int, int] = (90, 120)):
    """A deterministic random RGB PIL image of ``size`` (height, width)."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[0], size[1], 3) * 255).astype("uint8"))


def ort_session(model):
    """An ONNX Runtime CPU session of an in-memory ModelProto."""
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
