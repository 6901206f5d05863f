"""Pixel operations with the semantics of transformers' PIL backend (``PilBackend`` and
``image_transforms``), in numpy + PIL.

Images travel as ``uint8`` arrays [H, W, C] until they are rescaled; every resize goes through
PIL on ``uint8`` exactly as the PIL backend does (array -> ``Image.fromarray`` -> ``resize`` ->
array), so resampled pixels are bit-identical. Rescale multiplies in float64 and casts to
float32; normalize subtracts and divides in float32 — the same arithmetic, so the same bits.
Arrays become channel-first [C, H, W] only at the end (:func:`pixels_chw`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from rlens.errors import InputError, ModelError

# No resize may produce more pixels than this (1.6 GB as float32 RGB): a config or an aspect ratio
# that asks for more is refused instead of exhausting memory (transformers has no such bound).
MAX_RESIZE_PIXELS = 1 << 27
# PIL's resampling filter numbers, the values image processor configs store under "resample".
RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def resample_filter(value: Any) -> Image.Resampling:
    """The PIL filter a config names (an int 0..5, a PIL enum, or a name such as ``"BICUBIC"``)."""
    if isinstance(value, str) and value.upper() in RESAMPLE_NAMES.values():
        return Image.Resampling[value.upper()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in RESAMPLE_NAMES:
        return Image.Resampling(int(value))
    raise ModelError(f"unknown resample filter {value!r} in the image processor config "
                     f"(expected one of {sorted(RESAMPLE_NAMES)} = {', '.join(RESAMPLE_NAMES.values())})")


def rgb_array(image: Any, convert: bool) -> np.ndarray:
    """A PIL image as ``uint8`` [H, W, 3]; transparency is composited onto white (transformers'
    ``convert_to_rgb``) when ``convert`` is set."""
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image, got {type(image).__name__}")
    if convert:
        has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
        if has_alpha:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba).convert("RGB")
        else:
            image = image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"the image processor needs an 8-bit RGB image, got mode {image.mode!r} "
                         "(do_convert_rgb is off in its config)")
    if min(arr.shape[:2]) < 1:
        raise InputError(f"empty image ({image.size[0]}x{image.size[1]})")
    return arr


def resize(arr: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """``uint8`` [H, W, C] resized by PIL to (height, width)."""
    if height < 1 or width < 1 or height * width > MAX_RESIZE_PIXELS:
        raise InputError(f"the {arr.shape[1]}x{arr.shape[0]} image would be resized to {width}x{height} pixels "
                         f"(the image processor allows 1 to {MAX_RESIZE_PIXELS})")
    out = Image.fromarray(arr).resize((int(width), int(height)), resample=resample, reducing_gap=None)
    return np.asarray(out)


def output_size(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """(height, width) after the PIL backend's generic resize for a size dict."""
    if size.get("shortest_edge") and size.get("longest_edge"):
        return _shortest_edge_capped(height, width, size["shortest_edge"], size["longest_edge"])
    if size.get("shortest_edge"):
        return _shortest_edge(height, width, size["shortest_edge"])
    if size.get("max_height") and size.get("max_width"):
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    if size.get("height") and size.get("width"):
        return size["height"], size["width"]
    raise ModelError(f"size {size} needs 'height' and 'width', 'max_height' and 'max_width', or 'shortest_edge'")


def _shortest_edge(height: int, width: int, target: int) -> tuple[int, int]:
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = target, int(target * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _shortest_edge_capped(height: int, width: int, target: int, max_size: int) -> tuple[int, int]:
    raw = None
    lo, hi = float(min(height, width)), float(max(height, width))
    if hi / lo * target > max_size:
        raw = max_size * lo / hi
        target = int(round(raw))
    if (height <= width and height == target) or (width <= height and width == target):
        return height, width
    if width < height:
        return (int(raw * height / width) if raw is not None else int(target * height / width)), target
    return target, (int(raw * width / height) if raw is not None else int(target * width / height))


def center_crop(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] cropped around the centre to (height, width), zero-padded where it is smaller."""
    h, w = arr.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return arr[top:top + height, left:left + width]
    new_h, new_w = max(height, h), max(width, w)
    canvas = np.zeros((new_h, new_w) + arr.shape[2:], dtype=arr.dtype)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas[pad_top:pad_top + h, pad_left:pad_left + w] = arr
    top, left = top + pad_top, left + pad_left
    return canvas[max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]


def rescale(arr: np.ndarray, factor: float) -> np.ndarray:
    """``arr * factor`` computed in float64, returned as float32 (transformers' ``rescale``)."""
    return (arr.astype(np.float64) * factor).astype(np.float32)


def normalize(arr: np.ndarray, mean: Sequence[float] | float, std: Sequence[float] | float) -> np.ndarray:
    """``(arr - mean) / std`` per channel (last axis), in float32 unless ``arr`` is already float."""
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    channels = arr.shape[-1]
    mean_v = _per_channel(mean, channels, "image_mean").astype(arr.dtype)
    std_v = _per_channel(std, channels, "image_std").astype(arr.dtype)
    return (arr - mean_v) / std_v


def _per_channel(value: Sequence[float] | float, channels: int, name: str) -> np.ndarray:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * channels
    if len(values) != channels:
        raise ModelError(f"{name} has {len(values)} values for {channels} channels")
    return np.asarray(values)


def rescale_normalize(arr: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """The settings' rescale then normalize, on [H, W, C]."""
    if s["do_rescale"]:
        arr = rescale(arr, s["rescale_factor"])
    if s["do_normalize"]:
        arr = normalize(arr, s["image_mean"], s["image_std"])
    return arr


def pixels_chw(arr: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """[H, W, C] -> rescaled, normalized [C, H, W]. A ``uint8`` image goes through a table of the
    256 levels per channel, computed by :func:`rescale_normalize` itself: each pixel gets the bits
    the direct computation gives, in one pass."""
    if arr.dtype != np.uint8:
        return np.ascontiguousarray(np.moveaxis(rescale_normalize(arr, s), -1, 0))
    channels = arr.shape[2]
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], channels, axis=2)  # [1, 256, C]
    table = rescale_normalize(levels, s)[0]
    return np.stack([table[:, c].take(arr[..., c]) for c in range(channels)])


def pad_bottom_right(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C, H, W] padded with zeros at the bottom and right to (height, width)."""
    c, h, w = arr.shape
    if h > height or w > width:
        raise InputError(f"cannot pad a {w}x{h} image to {width}x{height}")
    if (h, w) == (height, width):
        return arr
    return np.pad(arr, ((0, 0), (0, height - h), (0, width - w)), mode="constant", constant_values=0)
