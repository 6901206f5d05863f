"""InternVL2 / InternVL2.5 checkpoints in OpenGVLab's own layout (``InternVLChatModel``, remote
code) loaded into the native transformers ``InternVLForConditionalGeneration`` without running any
remote code: config.json is read as JSON, weights from safetensors, names mapped here.

Layout mapped (OpenGVLab -> native):
- ``vision_model.*`` (InternViT: ``embeddings.class_embedding/position_embedding/patch_embedding``,
  ``encoder.layers.i.{attn.qkv,attn.proj,attn.q_norm,attn.k_norm,mlp.fc1,mlp.fc2,norm1,norm2,ls1,ls2}``)
  -> ``model.vision_tower.*`` (packed ``qkv`` split into q/k/v);
- ``mlp1.{0,1,3}`` -> ``model.multi_modal_projector.{layer_norm,linear_1,linear_2}``;
- ``language_model.*``: InternLM2 (packed ``wqkv``) -> Llama, or Qwen2/Llama renamed.
The image token is the tokenizer's ``<IMG_CONTEXT>``. tests/test_internvl_opengvlab.py checks the
logits against values computed once with OpenGVLab's own code (tests/data/).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlens.errors import ModelError
from rlens.families.internvl import internlm2_to_native

ARCHITECTURE = "InternVLChatModel"
IMG_CONTEXT = "<IMG_CONTEXT>"
_LMS = ("InternLM2ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM")

_VIT_LAYER = {"attn.proj.weight": "attention.projection_layer.weight",
              "attn.proj.bias": "attention.projection_layer.bias",
              "attn.q_norm.weight": "attention.q_norm.weight", "attn.k_norm.weight": "attention.k_norm.weight",
              "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
              "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
              "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
              "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
              "ls1": "lambda_1", "ls2": "lambda_2"}
_VIT_TOP = {"embeddings.class_embedding": "embeddings.cls_token",
            "embeddings.position_embedding": "embeddings.position_embeddings",
            "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
            "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias"}
_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}


def is_opengvlab(raw_config: dict[str, Any]) -> bool:
    return ARCHITECTURE in (raw_config.get("architectures") or [])


def native_config(raw: dict[str, Any], image_token_id: int) -> Any:
    """The ``InternVLConfig`` equivalent to an OpenGVLab ``InternVLChatConfig`` (a dict)."""
    import transformers

    vc, lc = raw["vision_config"], raw["llm_config"]
    if raw.get("ps_version", "v1") != "v2":
        raise ModelError(f"InternVL ps_version {raw.get('ps_version')!r}: only 'v2' (InternVL2 and later) is "
                         "supported; v1 checkpoints pixel-shuffle transposed")
    size = int(raw.get("force_image_size") or vc["image_size"])
    patch = int(vc["patch_size"])
    ratio = float(raw.get("downsample_ratio", 0.5))
    vision = dict(hidden_size=vc["hidden_size"], intermediate_size=vc["intermediate_size"],
                  num_attention_heads=vc["num_attention_heads"], num_hidden_layers=vc["num_hidden_layers"],
                  image_size=[size, size], patch_size=[patch, patch], norm_type=vc.get("norm_type", "rms_norm"),
                  layer_norm_eps=vc.get("layer_norm_eps", 1e-6), attention_bias=bool(vc.get("qkv_bias", False)),
                  use_qk_norm=bool(vc.get("qk_normalization", False)), hidden_act=vc.get("hidden_act", "gelu"))
    return transformers.InternVLConfig(
        vision_config=vision, text_config=_text_config(lc), image_token_id=image_token_id,
        image_seq_length=int((size // patch) ** 2 * ratio ** 2), downsample_ratio=ratio,
        vision_feature_layer=int(raw.get("select_layer", -1)), vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=bool(lc.get("tie_word_embeddings", False)),
        architectures=["InternVLForConditionalGeneration"])


def _text_config(lc: dict[str, Any]) -> dict[str, Any]:
    arch = (lc.get("architectures") or [""])[0]
    if arch not in _LMS:
        raise ModelError(f"InternVL language model {arch!r} is not supported; rlens maps {', '.join(_LMS)}")
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id",
            "pad_token_id", "hidden_act", "tie_word_embeddings")
    out = {k: lc[k] for k in keys if lc.get(k) is not None}
    rope = {"rope_type": "default", "rope_theta": float(lc.get("rope_theta", 10000.0))}
    scaling = lc.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind not in ("dynamic", "linear"):
            raise ModelError(f"InternVL language model rope_scaling {scaling}: rlens maps dynamic and linear")
        rope.update(rope_type=kind, factor=float(scaling["factor"]))
    out["rope_parameters"] = rope
    if arch == "InternLM2ForCausalLM":
        return dict(out, model_type="llama", attention_bias=bool(lc.get("bias", False)), mlp_bias=False)
    if arch == "Qwen2ForCausalLM":
        return dict(out, model_type="qwen2")
    return dict(out, model_type="llama", attention_bias=bool(lc.get("attention_bias", False)))


def native_state(state: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """OpenGVLab weight names -> ``InternVLForConditionalGeneration`` names (unknown keys: one error)."""
    lm: dict[str, Any] = {}
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith("language_model."):
            lm[key[len("language_model."):]] = value
        elif key.startswith("vision_model."):
            _vision_key(key[len("vision_model."):], value, out, unknown)
        elif key.startswith("mlp1.") and key.split(".")[1] in _PROJECTOR:
            _, idx, leaf = key.split(".")
            out[f"model.multi_modal_projector.{_PROJECTOR[idx]}.{leaf}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ModelError(f"InternVL checkpoint has keys rlens cannot map: {', '.join(sorted(unknown)[:8])}")
    for key, value in _language_state(lm, raw["llm_config"]).items():
        out["lm_head.weight" if key == "lm_head.weight" else f"model.language_model.{key}"] = value
    return out


def _vision_key(key: str, value: Any, out: dict[str, Any], unknown: list[str]) -> None:
    prefix = "model.vision_tower."
    if key in _VIT_TOP:
        out[prefix + _VIT_TOP[key]] = value
        return
    parts = key.split(".", 3)
    if len(parts) != 4 or parts[:2] != ["encoder", "layers"]:
        unknown.append("vision_model." + key)
        return
    layer, rest = f"{prefix}encoder.layer.{parts[2]}.", parts[3]
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        leaf = rest.rsplit(".", 1)[1]
        for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
            out[f"{layer}attention.{name}.{leaf}"] = part
    elif rest in _VIT_LAYER:
        out[layer + _VIT_LAYER[rest]] = value
    else:
        unknown.append("vision_model." + key)


def _language_state(lm: dict[str, Any], lc: dict[str, Any]) -> dict[str, Any]:
    """Language-model weights (keys relative to ``language_model.``) -> LlamaModel/Qwen2Model names."""
    if lc["architectures"][0] != "InternLM2ForCausalLM":
        return {("lm_head.weight" if k == "lm_head.weight" else k.removeprefix("model.")): v for k, v in lm.items()}
    heads, kv = int(lc["num_attention_heads"]), int(lc.get("num_key_value_heads") or lc["num_attention_heads"])
    return internlm2_to_native(lm, heads, kv, int(lc["hidden_size"]) // heads)


def image_token_id(folder: Path) -> int:
    """The id of ``<IMG_CONTEXT>`` in the checkpoint's tokenizer."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no tokenizer.json: rlens needs it to find the {IMG_CONTEXT} token id")
    token_id = Tokenizer.from_file(str(path)).token_to_id(IMG_CONTEXT)
    if token_id is None:
        raise ModelError(f"{path} has no {IMG_CONTEXT} token; is this an InternVL checkpoint?")
    return int(token_id)


def load_opengvlab(folder: Path, dtype: Any) -> Any:
    """``InternVLForConditionalGeneration`` with the weights of an OpenGVLab-layout ``folder``."""
    import transformers
    from safetensors.torch import load_file

    raw = json.loads((folder / "config.json").read_text())
    config = native_config(raw, image_token_id(folder))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} has no .safetensors weights; rlens does not load pickled weights")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    native = native_state(state, raw)
    model = transformers.InternVLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(native, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(f"{folder}: weights do not fit the native InternVL model (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype).eval()
