"""Shared session fixtures: the tiny presets with prepared inputs, and their unreduced bundles, each
built once per session. Plain helpers live in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import logging  # noqa: E402

import pytest  # noqa: E402

from helpers import PRESET_NAMES, sample_image  # noqa: E402


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


class _Bundles:
    """Unreduced (unverified) bundles, one per preset, exported once per session."""

    def __init__(self, tmp_path_factory) -> None:
        self.factory = tmp_path_factory
        self.made: dict = {}

    def __call__(self, name: str):
        """(loaded model, bundle path) of preset ``name``."""
        if name not in self.made:
            from rlens.export import ExportConfig, bundle_from_plan
            from rlens.models import load_model
            from rlens.plan import empty_plan

            loaded = load_model(name)
            out = self.factory.mktemp("bundles") / name
            bundle_from_plan(loaded, empty_plan(loaded.info()), out, ExportConfig(verify=False))
            self.made[name] = (loaded, out)
        return self.made[name]


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory):
    """``make_bundle(name) -> (loaded, path)``: the session's unreduced bundle of a preset."""
    return _Bundles(tmp_path_factory)


@pytest.fixture(params=PRESET_NAMES)
def bundle(request, make_bundle):
    return make_bundle(request.param)


@pytest.fixture
def qwen_bundle(make_bundle):
    return make_bundle("tiny-qwen2-vl")[1]
