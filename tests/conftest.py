"""Shared fixtures: the tiny presets (built once per session), a sample image, prepared inputs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import logging  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlens.presets import PRESETS  # noqa: E402

PRESET_NAMES = list(PRESETS)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def transformers_log_warnings_are_errors():
    """transformers announces API changes through its logger as well as with warnings (which
    pyproject's filterwarnings makes errors): a WARNING from its logger fails the test too."""
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.records:
        pytest.fail("transformers logged: " + " | ".join(r.getMessage()[:300] for r in handler.records))


def sample_image(seed: int = 0, size: tuple[int, int] = (90, 120)):
    from PIL import Image

    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[0], size[1], 3) * 255).astype("uint8"))


class _Cache:
    def __init__(self) -> None:
        self.models: dict = {}

    def get(self, name: str, tmp_path_factory):
        if name not in self.models:
            import torch

            from rlens.models import load_model
            from rlens.processing import Processor

            loaded = load_model(name)
            folder = tmp_path_factory.mktemp(name)
            loaded.save_processor(folder)
            proc = Processor(folder, loaded.family, loaded.config)
            prepared = proc.prepare(sample_image(), "What is in the image?")
            inputs = {k: torch.from_numpy(v) for k, v in proc.model_inputs(prepared).items()}
            self.models[name] = (loaded, proc, prepared, inputs)
        return self.models[name]


_CACHE = _Cache()


@pytest.fixture(params=PRESET_NAMES)
def preset(request, tmp_path_factory):
    """(loaded model, processor, prepared inputs, HF forward kwargs as tensors) per preset."""
    return _CACHE.get(request.param, tmp_path_factory)


@pytest.fixture
def any_preset(tmp_path_factory):
    return _CACHE.get("tiny-qwen2-vl", tmp_path_factory)
