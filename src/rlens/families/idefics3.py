"""Idefics3 / SmolVLM: SigLIP vision tower, pixel-shuffle connector, Llama/SmolLM text model.

Image splitting puts row/column tokens between the tiles' visual tokens (several spans), so
rlens processes Idefics3 images unsplit (``do_image_splitting=False``): one contiguous span.
"""

from __future__ import annotations

from typing import Any

from rlens.families import register
from rlens.families.base import Family, merged_patches


@register
class Idefics3(Family):
    name = "idefics3"
    architectures = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    model_types = ("idefics3", "smolvlm")
    model_class = "Idefics3ForConditionalGeneration"
    language_model_path = "model.text_model"
    vision_paths = ("model.vision_model", "model.connector")
    image_expansion = "<fake_token_around_image><global-img>{visual}<fake_token_around_image>"

    @classmethod
    def visual_tokens_per_image(cls, config: Any, image_size: tuple[int, int] | None = None) -> int:
        vc = config.vision_config
        return merged_patches(vc.image_size, vc.image_size, vc.patch_size, config.scale_factor)
