"""CLIP (LLaVA-1.5's vision tower): resize (shortest edge by default), centre crop, rescale,
normalize, optional pad -> ``pixel_values`` [images, 3, H, W] float32. This is also the PIL
backend's generic pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlens.errors import InputError
from rlens.imageproc import ops
from rlens.imageproc.base import CLIP_MEAN, CLIP_STD, ImageProcessor, height_width, register


@register("CLIPImageProcessor")
class CLIPImageProcessor(ImageProcessor):
    defaults = {
        "resample": 3, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "size": {"shortest_edge": 224},
        "default_to_square": False, "crop_size": {"height": 224, "width": 224}, "do_resize": True,
        "do_center_crop": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
    }

    def _from_config(self, values: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        if config.get("use_square_size"):  # KOSMOS-2's flag: a square of the class's default edge
            edge = self.defaults["size"]["shortest_edge"]
            values["size"] = {"height": edge, "width": edge}
        return values

    def _process(self, images: list[np.ndarray], s: dict[str, Any]) -> dict[str, np.ndarray]:
        out = []
        for arr in images:
            if s["do_resize"]:
                arr = ops.resize(arr, *ops.output_size(arr.shape[0], arr.shape[1], s["size"]), s["resample_filter"])
            if s["do_center_crop"]:
                arr = ops.center_crop(arr, *height_width(s["crop_size"], "crop_size"))
            out.append(ops.pixels_chw(arr, s))
        if s["do_pad"]:
            pad = s["pad_size"]
            h, w = height_width(pad, "pad_size") if pad else (max(a.shape[1] for a in out), max(a.shape[2] for a in out))
            out = [ops.pad_bottom_right(a, h, w) for a in out]
        if len({a.shape for a in out}) > 1:
            raise InputError(f"the images process to different shapes {sorted({a.shape for a in out})}; "
                             "pass them one at a time")
        return {"pixel_values": np.stack(out)}

