"""Qwen2-VL and Qwen2.5-VL: M-RoPE positions, vision tower ``model.visual`` (patches merged 2x2)."""

from __future__ import annotations

from typing import Any

from rlens.errors import ModelError
from rlens.families import register
from rlens.families.base import Family, merged_patches


@register
class Qwen2VL(Family):
    name = "qwen2-vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    vision_paths = ("model.visual",)
    rope_kind = "mrope"
    visual_token_attrs = ("image_token_id", "video_token_id")

    @classmethod
    def extra_text_inputs(cls, input_ids: Any, config: Any) -> dict[str, Any]:
        import numpy as np

        ids = np.asarray(input_ids)
        types = np.where(ids == config.image_token_id, 1, np.where(ids == config.video_token_id, 2, 0))
        return {"mm_token_type_ids": types.astype(np.int64)}

    vision_dynamic_axes = {"pixel_values": {0: "patches"}, "vision_position_ids": {0: "patches"},
                           "window_index": {0: "merged_patches"}, "window_reverse": {0: "merged_patches"},
                           "window_gather": {0: "window_slots"}, "window_valid": {0: "windows"},
                           "window_scatter": {0: "patches"}}

    @classmethod
    def vision_params(cls, config: Any) -> dict[str, Any]:
        vc = config.vision_config
        windowed = bool(getattr(vc, "fullatt_block_indexes", None))
        return {"merge_size": int(vc.spatial_merge_size), "patch_size": int(vc.patch_size),
                "window_size": int(vc.window_size) if windowed else None}

    @classmethod
    def vision_feeds(cls, processed: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        from rlens.families.qwen_vision import vision_feeds

        grid = tuple(int(v) for v in processed["image_grid_thw"][0])
        return {"pixel_values": processed["pixel_values"], **vision_feeds(grid, params)}

    @classmethod
    def token_grid(cls, processed: dict[str, Any], params: dict[str, Any]) -> tuple[int, int, int] | None:
        merge = int(params["merge_size"])
        t, h, w = (int(v) for v in processed["image_grid_thw"][0])
        return (t, h // merge, w // merge)

    @classmethod
    def vision_module(cls, model: Any, names: list[str]) -> Any:
        from rlens.families.qwen_vision import export_module, input_names

        windowed = bool(getattr(model.config.vision_config, "fullatt_block_indexes", None))
        if names != input_names(windowed):
            raise ModelError(f"{cls.name}: vision inputs {names} are not {input_names(windowed)}")
        return export_module(model)

    @classmethod
    def image_bounds(cls, image_processor: dict[str, Any]) -> dict[str, int]:
        size = image_processor.get("size") or {}
        low = image_processor.get("min_pixels") or size.get("shortest_edge")
        high = image_processor.get("max_pixels") or size.get("longest_edge")
        return {"min_pixels": int(low), "max_pixels": int(high)}

    @classmethod
    def vision_axes(cls, params: dict[str, Any], bounds: dict[str, int]) -> dict[str, list[int]]:
        """Patches: at least one merge block, at most max_pixels / patch^2 (smart_resize keeps h*w <= max)."""
        unit = int(params["merge_size"]) ** 2
        top = bounds["max_pixels"] // int(params["patch_size"]) ** 2 // unit * unit
        axes = {"patches": [unit, top], "merged_patches": [1, top // unit], "visual": [1, top // unit]}
        if params.get("window_size"):
            from rlens.families.qwen_vision import max_windows, window_slots

            windows = max_windows(params, top // unit)
            axes.update(windows=[1, windows], window_slots=[window_slots(params), windows * window_slots(params)])
        return axes

    lowerable = ("--max-pixels", "max_pixels", "min_pixels", "min_pixels")
    bound_note = "it resizes within min/max pixels"

    @classmethod
    def with_bound(cls, image_processor: dict[str, Any], value: int, bounds: dict[str, int]) -> dict[str, Any]:
        out = dict(image_processor, size=dict(image_processor.get("size") or {}, longest_edge=value,
                                              shortest_edge=bounds["min_pixels"]))
        if "max_pixels" in out:
            out["max_pixels"] = value
        return out

    @classmethod
    def visual_tokens_from_pixels(cls, config: Any, processed: dict[str, Any]) -> int:
        t, h, w = (int(v) for v in processed["image_grid_thw"][0])
        return t * h * w // config.vision_config.spatial_merge_size ** 2

    @classmethod
    def visual_tokens_per_image(cls, config: Any, image_size: tuple[int, int] | None = None) -> int:
        vc = config.vision_config
        if image_size is None:
            raise ValueError("Qwen2-VL's visual token count depends on the resized image size")
        return merged_patches(*image_size, vc.patch_size, vc.spatial_merge_size)


@register
class Qwen25VL(Qwen2VL):
    name = "qwen2.5-vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
