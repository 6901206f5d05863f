"""Qwen2-VL and Qwen2.5-VL: M-RoPE positions, vision tower ``model.visual`` (patches merged 2x2)."""

from __future__ import annotations

from typing import Any

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
    image_marker = "<|image_pad|>"
    visual_token = "<|image_pad|>"

    @classmethod
    def extra_text_inputs(cls, input_ids: Any, config: Any) -> dict[str, Any]:
        import numpy as np

        ids = np.asarray(input_ids)
        types = np.where(ids == config.image_token_id, 1, np.where(ids == config.video_token_id, 2, 0))
        return {"mm_token_type_ids": types.astype(np.int64)}

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
