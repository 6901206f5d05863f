"""InternVL2/3 (the transformers-native ``InternVLForConditionalGeneration``).

Original InternVL2 checkpoints with an InternLM2 language model store packed attention and
differently named FFN/norm weights; :func:`internlm2_to_native` renames and unpacks them so they
load into the native (Llama-shaped) decoder layers.
"""

from __future__ import annotations

import re
from typing import Any

from rlens.errors import ModelError
from rlens.families import register
from rlens.families.base import Family


@register
class InternVL(Family):
    name = "internvl"
    architectures = ("InternVLForConditionalGeneration",)
    model_types = ("internvl",)
    model_class = "InternVLForConditionalGeneration"
    image_expansion = "{start_image_token}{visual}{end_image_token}"
    expansion_tokens = {"start_image_token": "<img>", "end_image_token": "</img>"}
    image_call_kwargs = {"crop_to_patches": True}  # InternVLProcessor's default: dynamic tiling
    vision_dynamic_axes = {"pixel_values": {0: "tiles"}}

    @classmethod
    def visual_tokens_per_image(cls, config: Any, image_size: tuple[int, int] | None = None) -> int:
        """Per 448x448 tile (the image is cut into tiles; their tokens form one span)."""
        return int(config.image_seq_length)

    @classmethod
    def visual_tokens_from_pixels(cls, config: Any, processed: dict[str, Any]) -> int:
        return int(processed["pixel_values"].shape[0]) * int(config.image_seq_length)

    @classmethod
    def image_bounds(cls, image_processor: dict[str, Any]) -> dict[str, int]:
        """Tiles per image: ``min_patches..max_patches`` crops, plus a thumbnail when there are several."""
        return {"min_tiles": int(image_processor.get("min_patches", 1)),
                "max_tiles": int(image_processor.get("max_patches", 12))}

    @classmethod
    def vision_axes(cls, params: dict[str, Any], bounds: dict[str, int]) -> dict[str, list[int]]:
        top = bounds["max_tiles"] + (1 if bounds["max_tiles"] > 1 else 0)  # + the thumbnail
        return {"tiles": [1, top]}

    lowerable = ("--max-tiles", "max_tiles", "min_tiles", "min_patches")
    bound_note = "it cuts images into 448x448-style tiles"

    @classmethod
    def with_bound(cls, image_processor: dict[str, Any], value: int, bounds: dict[str, int]) -> dict[str, Any]:
        return dict(image_processor, max_patches=value)


# InternLM2 -> native names, inside one decoder layer (packed wqkv handled separately).
_LAYER_RENAMES = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wo.bias": "self_attn.o_proj.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_RENAMES = {
    "model.tok_embeddings.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def unpack_wqkv(wqkv: Any, num_heads: int, num_kv_heads: int, head_dim: int) -> tuple[Any, Any, Any]:
    """Split InternLM2's packed ``wqkv`` [(Hkv * (G + 2) * D), H] into q, k, v weights.

    InternLM2 groups rows per KV head: the G query heads sharing it, then its key, then its value.
    """
    groups = num_heads // num_kv_heads
    hidden = wqkv.shape[-1]
    w = wqkv.reshape(num_kv_heads, groups + 2, head_dim, hidden)
    q = w[:, :groups].reshape(num_heads * head_dim, hidden)
    k = w[:, groups].reshape(num_kv_heads * head_dim, hidden)
    v = w[:, groups + 1].reshape(num_kv_heads * head_dim, hidden)
    return q, k, v


def internlm2_to_native(state: dict[str, Any], num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, Any]:
    """Map an InternLM2 ``InternLM2ForCausalLM`` state dict onto native Llama-style names.

    Keys are relative to the language model (``model.layers.0.attention.wqkv.weight``,
    ``output.weight``); the result has the keys of ``LlamaModel``/``Qwen2Model`` plus
    ``lm_head.weight``. Unknown keys raise :class:`ModelError` naming them.
    """
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
        elif key == "output.weight":
            out["lm_head.weight"] = value
        elif (m := _LAYER_KEY.match(key)) is not None:
            idx, rest = m.groups()
            prefix = f"layers.{idx}."
            if rest in ("attention.wqkv.weight", "attention.wqkv.bias"):
                leaf = rest.rsplit(".", 1)[1]
                packed = value if leaf == "weight" else value[:, None]
                q, k, v = unpack_wqkv(packed, num_heads, num_kv_heads, head_dim)
                for name, part in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                    out[f"{prefix}self_attn.{name}.{leaf}"] = part if leaf == "weight" else part[:, 0]
            elif rest in _LAYER_RENAMES:
                out[prefix + _LAYER_RENAMES[rest]] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ModelError(f"InternLM2 checkpoint has keys rlens cannot map: {', '.join(sorted(unknown)[:8])}")
    return out

