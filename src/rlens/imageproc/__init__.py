"""Image processors of the supported families in numpy + PIL, equal to transformers' PIL backend
(tests/test_imageproc.py compares them with the ``*ImageProcessorPil`` classes), so the runtime
needs neither torch nor transformers, and a model folder or bundle never runs code.

``load_image_processor(folder)`` reads the folder's image processor config — the
``image_processor`` entry of ``processor_config.json`` when there is one (transformers 5 saves
it there), else ``preprocessor_config.json`` — refuses any ``auto_map`` (custom code) and
dispatches on ``image_processor_type``; the default, ``*Fast`` and ``*Pil`` names of a processor
all select its PIL-backend processing. The result is called as
``proc(images=[pil_image], return_tensors="np", **overrides)`` and returns numpy arrays.

Imports numpy, PIL and the standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlens.errors import ModelError
from rlens.imageproc import clip, got_ocr2, idefics3, llava_next, qwen2_vl  # noqa: F401  (register the processors)
from rlens.imageproc.base import ImageProcessor, processor_class, registered_types

__all__ = ["ImageProcessor", "load_image_processor", "read_image_processor_config", "registered_types",
           "image_processor_from_config", "CONFIG_FILES"]

PROCESSOR_CONFIG = "processor_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
CONFIG_FILES = (PROCESSOR_CONFIG, PREPROCESSOR_CONFIG)  # every file load_image_processor may read
MAX_CONFIG_BYTES = 1 << 20


def load_image_processor(folder: str | Path) -> ImageProcessor:
    """The image processor described by ``folder``'s config files; :class:`ModelError` for a
    missing, malformed, unsupported or code-carrying config."""
    return image_processor_from_config(read_image_processor_config(folder), Path(folder))


def image_processor_from_config(config: dict[str, Any], source: str | Path = "the config") -> ImageProcessor:
    if "auto_map" in config:
        raise ModelError(f"{source}: the image processor config has an auto_map (custom code); "
                         "rlens never runs code from a model folder or bundle")
    type_name = config.get("image_processor_type")
    if type_name is None and isinstance(config.get("feature_extractor_type"), str):
        type_name = config["feature_extractor_type"].replace("FeatureExtractor", "ImageProcessor")
    if not isinstance(type_name, str):
        raise ModelError(f"{source}: the image processor config names no image_processor_type")
    try:
        return processor_class(type_name)(config)
    except ModelError as e:
        raise ModelError(f"{source}: {e}") from None


def read_image_processor_config(folder: str | Path) -> dict[str, Any]:
    """The image processor config of ``folder`` (see the module docstring for which file)."""
    folder = Path(folder)
    nested = _read(folder / PROCESSOR_CONFIG)
    if nested is not None:
        if "auto_map" in nested:
            raise ModelError(f"{folder / PROCESSOR_CONFIG} has an auto_map (custom code); "
                             "rlens never runs code from a model folder or bundle")
        if "image_processor" in nested:
            config = nested["image_processor"]
            if not isinstance(config, dict):
                raise ModelError(f"{folder / PROCESSOR_CONFIG}: 'image_processor' is not an object")
            return config
    config = _read(folder / PREPROCESSOR_CONFIG)
    if config is None:
        raise ModelError(f"{folder} has no {PREPROCESSOR_CONFIG} (nor an image_processor in {PROCESSOR_CONFIG})")
    return config


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    if not path.is_file():
        raise ModelError(f"{path} is not a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; not an image processor config")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object")
    return data
