"""GotOcr2 (InternVL's image processor): with ``crop_to_patches`` the image is resized to the tile
grid (between ``min_patches`` and ``max_patches`` tiles) whose aspect ratio is closest to the
image's, cut into tiles of ``size``, and a thumbnail of the whole image follows when there is
more than one tile; otherwise one resize to ``size``. -> ``pixel_values`` [tiles, 3, H, W] float32,
``num_patches`` [images] int64."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlens.imageproc import ops
from rlens.imageproc.base import CLIP_MEAN, CLIP_STD, ImageProcessor, height_width, positive_int, register


def tile_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Every (columns, rows) with min_tiles <= columns*rows <= max_tiles, fewest tiles first
    (a stable sort of the column-major enumeration)."""
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]
    return sorted(grids, key=lambda g: g[0] * g[1])


def best_grid(height: int, width: int, tile: tuple[int, int], min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """The (columns, rows) whose aspect ratio is closest to the image's; on a tie the later
    (larger) grid wins while the image's area exceeds half the grid's area."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in tile_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile[0] * tile[1] * cols * rows:
            best = (cols, rows)
    return best


@register("GotOcr2ImageProcessor")
class GotOcr2ImageProcessor(ImageProcessor):
    defaults = {
        "resample": 3, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "size": {"height": 384, "width": 384},
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "crop_to_patches": False, "min_patches": 1, "max_patches": 12,
    }
    extra_keys = ("crop_to_patches", "min_patches", "max_patches")

    def _process(self, images: list[np.ndarray], s: dict[str, Any]) -> dict[str, np.ndarray]:
        tiles, counts = [], []
        for arr in images:
            if s["crop_to_patches"] and positive_int(s, "max_patches") > 1:
                parts = self.crop_to_tiles(arr, s)
            else:
                if s["do_resize"]:
                    arr = ops.resize(arr, *ops.output_size(arr.shape[0], arr.shape[1], s["size"]),
                                     s["resample_filter"])
                parts = [arr]
            counts.append(len(parts))
            tiles.extend(ops.pixels_chw(p, s) for p in parts)
        return {"pixel_values": np.stack(tiles), "num_patches": np.asarray(counts, dtype=np.int64)}

    @staticmethod
    def crop_to_tiles(arr: np.ndarray, s: dict[str, Any]) -> list[np.ndarray]:
        """``uint8`` [H, W, C] -> the tiles (row-major) and, for more than one, the thumbnail."""
        tile_h, tile_w = height_width(s["size"], "size")
        cols, rows = best_grid(arr.shape[0], arr.shape[1], (tile_h, tile_w), positive_int(s, "min_patches"),
                               positive_int(s, "max_patches"))
        canvas = ops.resize(arr, tile_h * rows, tile_w * cols, s["resample_filter"])
        parts = [canvas[r * tile_h:(r + 1) * tile_h, c * tile_w:(c + 1) * tile_w]
                 for r in range(rows) for c in range(cols)]
        if len(parts) != 1:
            parts.append(ops.resize(arr, tile_h, tile_w, s["resample_filter"]))
        return parts
