"""LLaVA-NeXT (anyres): the image's best resolution among ``image_grid_pinpoints`` (the most
effective pixels, then the least waste), the image resized into it keeping its aspect ratio and
zero-padded to it, cut into crop-size patches (row-major), after the whole image squeezed to the
base size; every patch is then resized, centre-cropped, rescaled and normalized as CLIP does.
-> ``pixel_values`` [images, patches, 3, H, W] float32 (images padded to the most patches) and
``image_sizes`` [images, 2] int64, the original (height, width)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rlens.errors import ModelError
from rlens.imageproc import ops
from rlens.imageproc.base import CLIP_MEAN, CLIP_STD, ImageProcessor, height_width, register

DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def select_best_resolution(original: tuple[int, int], resolutions: list[list[int]]) -> tuple[int, int]:
    """(height, width) of the resolution that keeps the most of the image's pixels when the image is
    scaled to fit it (at most its own pixel count), on a tie the one with the least unused area."""
    orig_h, orig_w = original
    best, best_effective, best_wasted = None, 0, float("inf")
    for height, width in resolutions:
        scale = min(width / orig_w, height / orig_h)
        effective = min(int(orig_w * scale) * int(orig_h * scale), orig_w * orig_h)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (height, width), effective, wasted
    if best is None:
        raise ModelError(f"image_grid_pinpoints {resolutions} selects no resolution")
    return best


def fit_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the image scaled to fit ``target`` keeping its aspect ratio (rounded up)."""
    target_h, target_w = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def check_pinpoints(value: Any) -> list[list[int]]:
    """``image_grid_pinpoints`` as a list of [height, width] positive ints; :class:`ModelError` otherwise."""
    ok = isinstance(value, list) and value and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                           for x in p) for p in value)
    if not ok:
        raise ModelError(f"image_grid_pinpoints must be a non-empty list of [height, width] positive integers, "
                         f"got {str(value)[:200]}")
    return [[int(h), int(w)] for h, w in value]


@register("LlavaNextImageProcessor")
class LlavaNextImageProcessor(ImageProcessor):
    defaults = {
        "resample": 3, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "size": {"shortest_edge": 224},
        "default_to_square": False, "crop_size": {"height": 224, "width": 224}, "do_resize": True,
        "do_center_crop": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "do_pad": True,
        "image_grid_pinpoints": DEFAULT_PINPOINTS,
    }
    extra_keys = ("image_grid_pinpoints",)

    def _process(self, images: list[np.ndarray], s: dict[str, Any]) -> dict[str, np.ndarray]:
        pinpoints = check_pinpoints(s["image_grid_pinpoints"])
        size, crop = s["size"] or {}, s["crop_size"] or {}
        base = (size["height"], size["width"]) if size.get("height") and size.get("width") else \
            (size.get("shortest_edge"), size.get("shortest_edge"))
        patch = crop.get("height") or size.get("height") or size.get("shortest_edge")
        if not base[0] or not patch:
            raise ModelError(f"LLaVA-NeXT needs size with 'shortest_edge' or 'height'/'width', got {size}")
        out = []
        for arr in images:
            parts = self.image_patches(arr, pinpoints, base, patch, s["resample_filter"])
            done = []
            for part in parts:
                if s["do_resize"]:
                    part = ops.resize(part, *ops.output_size(part.shape[0], part.shape[1], s["size"]),
                                      s["resample_filter"])
                if s["do_center_crop"]:
                    part = ops.center_crop(part, *height_width(s["crop_size"], "crop_size"))
                done.append(ops.pixels_chw(part, s))
            out.append(np.stack(done))
        if s["do_pad"]:
            most = max(len(x) for x in out)
            out = [np.pad(x, ((0, most - len(x)), (0, 0), (0, 0), (0, 0))) for x in out]
        sizes = np.asarray([a.shape[:2] for a in images], dtype=np.int64)
        return {"pixel_values": np.stack(out), "image_sizes": sizes}

    @staticmethod
    def image_patches(arr: np.ndarray, pinpoints: list[list[int]], base: tuple[int, int], patch: int,
                      resample: Any) -> list[np.ndarray]:
        """``uint8`` [H, W, C] -> the image squeezed to ``base``, then the patches of the image
        resized and zero-padded (centred) to its best resolution, row-major."""
        target = select_best_resolution(arr.shape[:2], pinpoints)
        new_h, new_w = fit_size(arr.shape[0], arr.shape[1], target)
        canvas = ops.resize(arr, new_h, new_w, resample)
        top, left = (target[0] - new_h) // 2, (target[1] - new_w) // 2
        bottom, right = target[0] - new_h - top, target[1] - new_w - left
        canvas = np.pad(canvas, ((top, bottom), (left, right), (0, 0)), mode="constant", constant_values=0)
        patches = [canvas[i:i + patch, j:j + patch] for i in range(0, target[0], patch)
                   for j in range(0, target[1], patch)]
        return [ops.resize(arr, base[0], base[1], resample), *patches]
