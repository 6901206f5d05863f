"""Idefics3 / SmolVLM: resize so the longest edge is ``size["longest_edge"]`` (even short edge, at
most 4096); with ``do_image_splitting`` resize up to multiples of ``max_image_size`` and cut into
tiles of that edge followed by the whole image squeezed to one tile, otherwise squeeze the image
to one ``max_image_size`` square; rescale, normalize, pad every sample to the largest tile count
and size. -> ``pixel_values`` [samples, images, 3, H, W] float32 and ``pixel_attention_mask``
[samples, images, H, W] int64 (1 = pixel, 0 = padding); ``rows``/``cols`` [samples, images] int64
with ``return_row_col_info``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rlens.errors import InputError, ModelError
from rlens.imageproc import ops
from rlens.imageproc.base import STANDARD_MEAN, STANDARD_STD, ImageProcessor, register

MAX_IMAGE_SIZE = 4096


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) with the longest edge at ``longest``, the other edge rounded up to even,
    then scaled down so that no edge exceeds MAX_IMAGE_SIZE."""
    aspect = width / height
    if width >= height:
        width = longest
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def split_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``tile``, the other edge through the aspect ratio."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


@register("Idefics3ImageProcessor", "SmolVLMImageProcessor")  # SmolVLM2's is the same processing
class Idefics3ImageProcessor(ImageProcessor):
    defaults = {
        "resample": 1, "image_mean": STANDARD_MEAN, "image_std": STANDARD_STD, "size": {"longest_edge": 4 * 364},
        "max_image_size": {"longest_edge": 364}, "do_resize": True, "do_rescale": True, "do_normalize": True,
        "do_convert_rgb": True, "do_image_splitting": True, "do_pad": True, "return_row_col_info": False,
    }
    extra_keys = ("do_image_splitting", "max_image_size", "return_row_col_info")
    nested_input = True

    def _resize(self, arr: np.ndarray, size: dict[str, int], s: dict[str, Any]) -> np.ndarray:
        if size.get("longest_edge"):
            h, w = longest_edge_size(arr.shape[0], arr.shape[1], size["longest_edge"])
        elif size.get("height") and size.get("width"):
            h, w = size["height"], size["width"]
        else:
            raise ModelError(f"size needs 'longest_edge' or 'height' and 'width', got {size}")
        return ops.resize(arr, h, w, s["resample_filter"])

    def _split(self, arr: np.ndarray, tile: int, s: dict[str, Any]) -> tuple[list[np.ndarray], int, int]:
        arr = self._resize(arr, dict(zip(("height", "width"), split_size(arr.shape[0], arr.shape[1], tile))), s)
        h, w = arr.shape[:2]
        if h <= tile and w <= tile:
            return [arr], 0, 0
        rows, cols = (h - tile) // tile + 1, (w - tile) // tile + 1
        frames = [arr[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] for r in range(rows) for c in range(cols)]
        frames.append(self._resize(arr, {"height": tile, "width": tile}, s))
        return frames, rows, cols

    def _process(self, images: list[list[np.ndarray]], s: dict[str, Any]) -> dict[str, np.ndarray]:
        tile = _tile_edge(s["max_image_size"])
        samples, rows, cols = [], [], []
        for batch in images:
            frames, r_of, c_of = [], [], []
            for arr in batch:
                if s["do_resize"]:
                    arr = self._resize(arr, s["size"], s)
                if s["do_image_splitting"]:
                    parts, r, c = self._split(arr, tile, s)
                else:
                    parts, r, c = [self._resize(arr, {"height": tile, "width": tile}, s)], 0, 0
                frames.extend(parts)
                r_of.append(r)
                c_of.append(c)
            samples.append([ops.pixels_chw(f, s) for f in frames])
            rows.append(r_of)
            cols.append(c_of)
        out = _pad(samples) if s["do_pad"] else _stack(samples)
        if s["return_row_col_info"]:
            out["rows"], out["cols"] = _ints(rows), _ints(cols)
        return out


def _tile_edge(max_image_size: Any) -> int:
    edge = max_image_size.get("longest_edge") if isinstance(max_image_size, dict) else None
    if not isinstance(edge, int) or isinstance(edge, bool) or edge < 1:
        raise ModelError(f"max_image_size needs a positive 'longest_edge', got {max_image_size!r}")
    return edge


def _pad(samples: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Every sample padded to the most frames, every frame to the largest height and width."""
    count = max(len(s) for s in samples)
    frames = [f for s in samples for f in s]
    c, h, w = frames[0].shape[0], max(f.shape[1] for f in frames), max(f.shape[2] for f in frames)
    pixels = np.zeros((len(samples), count, c, h, w), dtype=np.float32)
    mask = np.zeros((len(samples), count, h, w), dtype=np.int64)
    for i, sample in enumerate(samples):
        for j, f in enumerate(sample):
            pixels[i, j, :, :f.shape[1], :f.shape[2]] = f
            mask[i, j, :f.shape[1], :f.shape[2]] = 1
    return {"pixel_values": pixels, "pixel_attention_mask": mask}


def _stack(samples: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    shapes = {f.shape for s in samples for f in s}
    if len(shapes) > 1 or len({len(s) for s in samples}) > 1:
        raise InputError("without do_pad the images must process to one shape and count; pass one image")
    return {"pixel_values": np.asarray(samples)}


def _ints(values: list[list[int]]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)
