"""Idefics3 / SmolVLM: SigLIP vision tower, pixel-shuffle connector, Llama/SmolLM text model.

Image splitting puts row/column tokens between the tiles' visual tokens (several spans), which
rlens v1 does not support: a checkpoint whose preprocessor_config.json has ``do_image_splitting``
on (SmolVLM's default) is refused at export with one clear error; with it off, every image is
resized to the processor's one size and gives one contiguous span, as Hugging Face's processor does.
"""

from __future__ import annotations

from typing import Any

from rlens.errors import ModelError
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

    @classmethod
    def image_bounds(cls, image_processor: dict[str, Any]) -> dict[str, int]:
        if image_processor.get("do_image_splitting", True):
            raise ModelError(
                "Idefics3/SmolVLM image splitting (do_image_splitting in preprocessor_config.json) puts row/column "
                "tokens between the tiles: several visual spans, which rlens v1 does not support. Set "
                '"do_image_splitting": false in the checkpoint\'s preprocessor_config.json to export it unsplit')
        return {}
