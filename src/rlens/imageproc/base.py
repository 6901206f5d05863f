"""The image processor interface, its settings and the registry of processor types.

Settings resolve as transformers resolves them: the class defaults, then the config file's
values, then the keyword arguments of the call; ``size``/``crop_size``/``pad_size`` become size
dicts (an int means a square, or the shortest edge where the class does not default to square).
Each processor module declares its defaults and registers the ``image_processor_type`` names it
implements (the default, ``*Fast`` and ``*Pil`` spellings of one processing); generic code never
names a processor.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from rlens.errors import InputError, ModelError
from rlens.imageproc import ops

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
STANDARD_MEAN = (0.5, 0.5, 0.5)
STANDARD_STD = (0.5, 0.5, 0.5)

# The keys every processor understands (transformers' ImagesKwargs that change pixels), defaults.
BASE_DEFAULTS: dict[str, Any] = {
    "do_convert_rgb": None, "do_resize": None, "size": None, "default_to_square": True,
    "crop_size": None, "resample": None, "do_rescale": None, "rescale_factor": 1 / 255,
    "do_normalize": None, "image_mean": None, "image_std": None, "do_pad": None, "pad_size": None,
    "do_center_crop": None,
}
# Keys a call may pass that do not change pixels (accepted, ignored).
_INERT = {"data_format", "input_data_format", "device", "disable_grouping", "image_seq_length"}
_SIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"longest_edge"},
              {"max_height", "max_width"}, {"min_pixels", "max_pixels"})

_REGISTRY: dict[str, type[ImageProcessor]] = {}


def register(*base_names: str) -> Callable[[type[ImageProcessor]], type[ImageProcessor]]:
    """Register a processor under each base name and its ``Fast`` and ``Pil`` spellings."""

    def deco(cls: type[ImageProcessor]) -> type[ImageProcessor]:
        for base in base_names:
            for name in (base, base + "Fast", base + "Pil"):
                _REGISTRY[name] = cls
        cls.type_name = base_names[0]
        return cls

    return deco


def processor_class(type_name: str) -> type[ImageProcessor]:
    if type_name not in _REGISTRY:
        known = sorted({c.type_name for c in _REGISTRY.values()})
        raise ModelError(f"unsupported image processor type {type_name!r}; rlens implements {', '.join(known)}")
    return _REGISTRY[type_name]


def registered_types() -> list[str]:
    return sorted(_REGISTRY)


class ImageProcessor:
    """Called as ``proc(images=[pil_image], return_tensors="np", **overrides)``; returns a dict of
    numpy arrays with the keys, dtypes and shapes of the transformers processor's output."""

    type_name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}  # the class's own defaults, over BASE_DEFAULTS
    extra_keys: ClassVar[tuple[str, ...]] = ()  # processor-specific settings (None by default)
    nested_input: ClassVar[bool] = False  # a batch is a list of lists of images (Idefics3)

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = copy.deepcopy(config)  # as read from the folder
        values = {**BASE_DEFAULTS, **{k: None for k in self.extra_keys}, **copy.deepcopy(self.defaults)}
        values.update({k: copy.deepcopy(v) for k, v in config.items() if k in values})
        self.settings = self._standardize(self._from_config(values, config))
        for key in self.extra_keys:
            setattr(self, key, self.settings[key])

    # ---- hooks ---------------------------------------------------------------------------------
    def _from_config(self, values: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Class-specific translation of config keys (e.g. Qwen's min/max pixels into ``size``)."""
        return values

    def _call_overrides(self, values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """Class-specific translation of call keywords."""
        values.update(overrides)
        return values

    def _process(self, images: list[Any], s: dict[str, Any]) -> dict[str, np.ndarray]:
        """``uint8`` [H, W, 3] arrays (a list per sample when ``nested_input``) -> outputs."""
        raise NotImplementedError

    # ---- interface -----------------------------------------------------------------------------
    @property
    def size(self) -> dict[str, int]:
        return dict(self.settings["size"] or {})

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings (JSON types) and the processor type."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings.items()}
        return {"image_processor_type": self.type_name, **copy.deepcopy(out)}

    def __call__(self, images: Any = None, return_tensors: str | None = "np", **kwargs: Any) -> dict[str, np.ndarray]:
        if return_tensors != "np":
            raise TypeError(f"rlens image processors return numpy arrays (return_tensors='np'), got {return_tensors!r}")
        known = set(self.settings) | self._call_keys()
        unknown = sorted(set(kwargs) - known - _INERT)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {unknown}")
        values = self._call_overrides(dict(self.settings), {k: v for k, v in kwargs.items() if k not in _INERT})
        s = self._standardize(values)
        self._validate(s)
        batches = [[ops.rgb_array(im, bool(s["do_convert_rgb"])) for im in batch] for batch in self._batches(images)]
        return self._process(batches if self.nested_input else [b[0] for b in batches], s)

    def _call_keys(self) -> set[str]:
        return set()

    def _batches(self, images: Any) -> list[list[Any]]:
        """The input as samples, each a list of images: one sample per image unless the processor
        takes nested input (then a flat list is one sample)."""
        if images is None:
            raise InputError("no image given")
        if not isinstance(images, (list, tuple)):
            images = [images]
        if images and all(isinstance(b, (list, tuple)) for b in images):
            batches = [list(b) for b in images]
        else:
            batches = [list(images)]
        if not self.nested_input:
            batches = [[im] for b in batches for im in b]
        if not any(batches):
            raise InputError("no image given")
        return batches

    # ---- settings ------------------------------------------------------------------------------
    def _standardize(self, v: dict[str, Any]) -> dict[str, Any]:
        v = dict(v)
        square = v.get("default_to_square")
        v["default_to_square"] = True if square is None else bool(square)
        v["size"] = size_dict(v["size"], v["default_to_square"], "size")
        v["crop_size"] = size_dict(v["crop_size"], True, "crop_size")
        v["pad_size"] = size_dict(v["pad_size"], True, "pad_size")
        for key in ("image_mean", "image_std"):
            if isinstance(v[key], list):
                v[key] = tuple(v[key])
        return v

    def _validate(self, s: dict[str, Any]) -> None:
        """transformers' validate_preprocess_arguments, as one-line :class:`ModelError`s."""
        if s["do_rescale"] and not _is_number(s["rescale_factor"]):
            raise ModelError(f"do_rescale needs a numeric rescale_factor, got {s['rescale_factor']!r}")
        if s["do_normalize"]:
            for key in ("image_mean", "image_std"):
                val = s[key]
                vals = val if isinstance(val, tuple) else (val,)
                if not vals or not all(_is_number(x) for x in vals):
                    raise ModelError(f"do_normalize needs numeric {key}, got {val!r}")
            std = s["image_std"] if isinstance(s["image_std"], tuple) else (s["image_std"],)
            if any(x == 0 for x in std):
                raise ModelError(f"image_std has a zero: {s['image_std']!r}")
        if s["do_center_crop"] and not s["crop_size"]:
            raise ModelError("do_center_crop needs crop_size")
        if s["do_resize"] and not s["size"]:
            raise ModelError("do_resize needs size")
        # transformers' PIL backend resizes with BILINEAR when no filter is set
        s["resample_filter"] = ops.resample_filter(s["resample"] if s["resample"] is not None else 2)


def size_dict(size: Any, default_to_square: bool, name: str) -> dict[str, int] | None:
    """transformers' ``get_size_dict``: an int, a (height, width) pair or a dict -> a checked dict."""
    if size is None:
        return None
    if isinstance(size, dict):
        out = dict(size)
    elif _is_int(size):
        out = {"height": int(size), "width": int(size)} if default_to_square else {"shortest_edge": int(size)}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        out = {"height": size[0], "width": size[1]}
    else:
        raise ModelError(f"{name} {size!r} is not an int, a (height, width) pair or a dict")
    if set(out) not in _SIZE_KEYS:
        raise ModelError(f"{name} must have one of the key sets {[sorted(k) for k in _SIZE_KEYS]}, got {sorted(out)}")
    if not all(_is_int(x) and x > 0 for x in out.values()):
        raise ModelError(f"{name} must hold positive integers, got {out}")
    return {k: int(x) for k, x in out.items()}


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def positive_int(s: dict[str, Any], key: str) -> int:
    """A processor-specific setting that must be a positive int; :class:`ModelError` otherwise."""
    value = s.get(key)
    if not _is_int(value) or value < 1:
        raise ModelError(f"the image processor's {key} must be a positive integer, got {value!r}")
    return int(value)


def height_width(size: dict[str, int] | None, name: str) -> tuple[int, int]:
    """(height, width) of a size dict that must name both; :class:`ModelError` otherwise."""
    if not size or "height" not in size or "width" not in size:
        raise ModelError(f"{name} needs 'height' and 'width', got {size}")
    return size["height"], size["width"]
