"""LLaVA-1.5 and LLaVA-NeXT (Llama / Mistral / Vicuna language models, CLIP vision tower)."""

from __future__ import annotations

from typing import Any

from rlens.errors import ModelError
from rlens.families import register
from rlens.families.base import Family, merged_patches


@register
class Llava(Family):
    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    visual_token_attrs = ("image_token_id", "image_token_index")

    @classmethod
    def visual_tokens_per_image(cls, config: Any, image_size: tuple[int, int] | None = None) -> int:
        vc = config.vision_config
        n = merged_patches(vc.image_size, vc.image_size, vc.patch_size)
        return n + (1 if config.vision_feature_select_strategy == "full" else 0)


@register
class LlavaNext(Llava):
    """LLaVA-NeXT (anyres): the count depends on the original image size, so it is taken from
    the processor at run time; the decoder side is identical to LLaVA-1.5."""

    name = "llava-next"
    architectures = ("LlavaNextForConditionalGeneration",)
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"

    @classmethod
    def visual_tokens_per_image(cls, config: Any, image_size: tuple[int, int] | None = None) -> int:
        raise ModelError("LLaVA-NeXT (anyres) images are not prepared by rlens v1: its visual token count depends "
                         "on each image's size and tiles; the decoder-side reductions and calibration on "
                         "precomputed inputs work")
