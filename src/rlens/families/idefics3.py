"""Idefics3 / SmolVLM: SigLIP vision tower, pixel-shuffle connector, Llama/SmolLM text model.

Image splitting puts row/column tokens between the tiles' visual tokens (several visual spans),
which rlens does not support (docs/design.md §9): a checkpoint whose image processor has
``do_image_splitting`` on (SmolVLM's default) is refused with one clear error naming
``--no-image-splitting``, which writes ``do_image_splitting: false`` into the bundle's own copy of
the processor config (never the checkpoint's). Unsplit, every image is resized to the processor's
one tile size and gives one contiguous span, as Hugging Face's processor does.

SmolVLM (``SmolVLMForConditionalGeneration``) has the same model layout, image processor and image
prompt (``<fake_token_around_image><global-img>`` + image tokens + ``<fake_token_around_image>``);
it is its own family only because transformers builds it from its own class.
"""

from __future__ import annotations

from typing import Any

from rlens.errors import ModelError
from rlens.families import register
from rlens.families.base import Family, merged_patches

SPLITTING_REFUSED = (
    "{name}: the checkpoint's image processor splits images (do_image_splitting: true), which puts row/column "
    "text tokens between the tiles' visual tokens (several visual spans; rlens takes one per image): pass "
    "--no-image-splitting to export it unsplit (written into the bundle's copy of the processor config; your "
    "checkpoint is not changed)")


@register
class Idefics3(Family):
    name = "idefics3"
    architectures = ("Idefics3ForConditionalGeneration",)
    model_types = ("idefics3",)
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
            raise ModelError(SPLITTING_REFUSED.format(name=cls.name))
        return {}

    @classmethod
    def image_options(cls, image_processor: dict[str, Any], image_splitting: bool) -> dict[str, Any]:
        if image_splitting or image_processor.get("do_image_splitting", True) is False:
            return image_processor
        return dict(image_processor, do_image_splitting=False)


@register
class SmolVLM(Idefics3):
    name = "smolvlm"
    architectures = ("SmolVLMForConditionalGeneration",)
    model_types = ("smolvlm",)
    model_class = "SmolVLMForConditionalGeneration"
    #: SmolVLM's get_image_features has an in-place ``|=`` (aten::__ior_) that the TorchScript exporter
    #: cannot export; the dynamo exporter takes it.
    vision_exporters = ("dynamo",)
