"""Seeded tiny InternVL2 checkpoints in OpenGVLab's layout, rebuilt identically from a spec.

``make_expected.py`` (run once, with OpenGVLab's code) writes ``<variant>.json``: the
InternVLChatConfig as config.json holds it, every weight's name and shape, and the logits that
OpenGVLab's ``InternVLChatModel`` gives on :func:`inputs`. The test rebuilds the checkpoint folder
from that spec with :func:`weights` (numpy, seeded by the weight's name) and needs no OpenGVLab code.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

IMG_CONTEXT_ID = 261  # "<IMG_CONTEXT>" in rlens' tiny-internvl tokenizer
TILES = 2

_VISION = dict(architectures=["InternVisionModel"], hidden_size=32, intermediate_size=64, num_attention_heads=2,
               num_hidden_layers=2, image_size=56, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu",
               use_flash_attn=False)
_LLM = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=320, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=256,
            eos_token_id=258, pad_token_id=256, tie_word_embeddings=False, hidden_act="silu")

#: InternVL2 with an InternLM2 LM (packed wqkv) and an RMS-norm/QK-norm InternViT (the 6B kind);
#: InternVL2/2.5 with a Qwen2 LM and a LayerNorm InternViT (the 300M kind)
CONFIGS = {
    "internlm2": dict(
        vision_config=dict(_VISION, norm_type="rms_norm", qkv_bias=False, qk_normalization=True),
        llm_config=dict(_LLM, architectures=["InternLM2ForCausalLM"], bias=False, attn_implementation="eager",
                        rope_scaling={"type": "dynamic", "factor": 2.0}),
        select_layer=-1, downsample_ratio=0.5, ps_version="v2", template="internlm2-chat", force_image_size=56),
    "qwen2": dict(
        vision_config=dict(_VISION, norm_type="layer_norm", qkv_bias=True, qk_normalization=False),
        llm_config=dict(_LLM, architectures=["Qwen2ForCausalLM"], attn_implementation="eager"),
        select_layer=-1, downsample_ratio=0.5, ps_version="v2", template="Hermes-2", force_image_size=56),
}


def weights(spec: dict) -> dict[str, np.ndarray]:
    """Every weight of the spec, float32, seeded by its name (norm gains near 1, the rest ~ 1/sqrt(fan_in))."""
    out = {}
    for name, shape in spec["shapes"].items():
        rng = np.random.RandomState(zlib.crc32(name.encode()))
        x = rng.standard_normal(shape).astype(np.float32)
        if len(shape) >= 2:
            x *= 0.8 / np.sqrt(float(np.prod(shape[1:])))
        elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_weight", "mlp1.0.weight")):
            x = 1.0 + 0.1 * x
        else:
            x *= 0.1
        out[name] = x
    return out


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """(input_ids [1, S] int64 with one span of TILES * 4 image tokens, pixel_values [TILES, 3, 56, 56])."""
    rng = np.random.RandomState(11)
    ids = np.concatenate([rng.randint(0, 256, 7), np.full(TILES * 4, IMG_CONTEXT_ID), rng.randint(0, 256, 9)])
    pixels = rng.standard_normal((TILES, 3, 56, 56)).astype(np.float32)
    return ids[None].astype(np.int64), pixels


def write_checkpoint(spec: dict, folder: Path, tokenizer_json: str) -> None:
    """config.json, model.safetensors and tokenizer.json in OpenGVLab's layout."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(spec["config"], indent=2))
    save_file(weights(spec), str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(tokenizer_json)
