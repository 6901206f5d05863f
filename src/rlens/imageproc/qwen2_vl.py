"""Qwen2-VL / Qwen2.5-VL: resize to a multiple of patch*merge within [min_pixels, max_pixels],
rescale, normalize, then flatten into patches (each spatial patch repeated over the temporal
patch size) in merge-window order: ``pixel_values`` [grid_t*grid_h*grid_w, C*tp*p*p] float32 and
``image_grid_thw`` [images, 3] int64."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rlens.errors import InputError, ModelError
from rlens.imageproc import ops
from rlens.imageproc.base import CLIP_MEAN, CLIP_STD, ImageProcessor, positive_int, register

MAX_ASPECT = 200


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width), both multiples of ``factor``, with about the image's aspect ratio and
    ``min_pixels <= height*width <= max_pixels`` (Qwen2-VL's rule)."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise InputError(f"the image's aspect ratio ({width}x{height}) exceeds {MAX_ASPECT}:1, "
                         "the most Qwen2-VL's image processor accepts")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@register("Qwen2VLImageProcessor")
class Qwen2VLImageProcessor(ImageProcessor):
    defaults = {
        "do_resize": True, "resample": 3, "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
        "default_to_square": False, "do_rescale": True, "do_normalize": True, "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD, "do_convert_rgb": True, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    }
    extra_keys = ("patch_size", "temporal_patch_size", "merge_size")

    def _from_config(self, values: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        # min_pixels / max_pixels in the config override the size bounds (as transformers' __init__)
        return self._pixel_bounds(values, config)

    def _call_overrides(self, values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        overrides = dict(overrides)
        bounds = {k: overrides.pop(k) for k in ("min_pixels", "max_pixels") if k in overrides}
        values.update(overrides)
        return self._pixel_bounds(values, bounds)

    def _call_keys(self) -> set[str]:
        return {"min_pixels", "max_pixels"}

    @staticmethod
    def _pixel_bounds(values: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
        size = values.get("size")
        size = dict(size) if isinstance(size, dict) else {}
        for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if src.get(key) is not None:
                size[edge] = src[key]
                size.pop(key, None)
        if size:
            values["size"] = size
        return values

    @property
    def min_pixels(self) -> int:
        return int(self.size.get("shortest_edge", 0))

    @property
    def max_pixels(self) -> int:
        return int(self.size.get("longest_edge", 0))

    def _process(self, images: list[np.ndarray], s: dict[str, Any]) -> dict[str, np.ndarray]:
        patch, merge, temporal = (positive_int(s, k) for k in ("patch_size", "merge_size", "temporal_patch_size"))
        rows, grids = [], []
        for arr in images:
            if s["do_resize"]:
                size = s["size"]
                if not size.get("shortest_edge") or not size.get("longest_edge"):
                    raise ModelError(f"size needs 'shortest_edge' and 'longest_edge' (min/max pixels), got {size}")
                h, w = smart_resize(arr.shape[0], arr.shape[1], patch * merge, size["shortest_edge"],
                                    size["longest_edge"])
                arr = ops.resize(arr, h, w, s["resample_filter"])
            arr = ops.pixels_chw(arr, s)
            flat, gh, gw = patchify(arr, patch, merge, temporal)
            rows.append(flat)
            grids.append([1, gh, gw])
        return {"pixel_values": np.concatenate(rows, axis=0), "image_grid_thw": np.asarray(grids, dtype=np.int64)}


def patchify(image: np.ndarray, patch: int, merge: int, temporal: int) -> tuple[np.ndarray, int, int]:
    """[C, H, W] -> ([gh*gw, C*temporal*patch*patch], gh, gw). Rows run over merge windows
    (window row, window column), then the patches inside a window (row, column); a row holds the
    channels, each repeated ``temporal`` times (a still image is a clip of identical frames), of
    one patch."""
    image = np.asarray(image, dtype=np.float32)
    c, h, w = image.shape
    if h % (patch * merge) or w % (patch * merge):
        raise InputError(f"a {w}x{h} image is not a multiple of patch_size*merge_size = {patch * merge} "
                         "(do_resize is off in the image processor config)")
    gh, gw = h // patch, w // patch
    x = image.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # window row, window col, row in window, col in window, C, py, px
    x = np.repeat(x[:, :, :, :, :, None], temporal, axis=5)
    return x.reshape(gh * gw, c * temporal * patch * patch), gh, gw
