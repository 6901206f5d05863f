"""Built-in tiny presets: small random-weight models built from fixed configs with the real
transformers classes (seeded), and their processor files. They are the embedded default model
of the demo and the models of the tests; nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlens.errors import ModelError

VOCAB = 320  # 256 byte tokens + special tokens, rounded up
SEED = 1234

_TEXT = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=2048,
             rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False)

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
_QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_INTERNVL_TEMPLATE = _QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")
_LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# LLaVA-NeXT's anyres grids on 56-pixel tiles (the real ones: 1x2, 2x1, 2x2, 3x1, 1x3 of 336): 1x2, 2x1,
# 2x3, 3x1, 3x3, so images of 90x120, 200x60 and 150x220 (h x w) select three different grids.
_LLAVA_NEXT_PINPOINTS = [[56, 112], [112, 56], [112, 168], [168, 56], [168, 168]]
_IDEFICS_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

# SmolVLM2's own chat template (SmolVLMProcessor's default, as its checkpoints ship it)
_SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}"
    "{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}"
    "{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    config_class: str
    config: dict[str, Any]
    specials: list[str]
    eos: str
    chat_template: str
    image_processor: str
    image_processor_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] = (112, 112)
    #: processor_config.json (``processor_class`` + the processor's own options) and extra
    #: tokenizer_config.json entries, as the family's Hugging Face checkpoints ship them
    processor_config: dict[str, Any] = field(default_factory=dict)
    tokenizer_config: dict[str, Any] = field(default_factory=dict)

    def token_id(self, token: str) -> int:
        return 256 + self.specials.index(token)


def _qwen(name: str, family: str, cls: str, vision: dict[str, Any]) -> Preset:
    sp = _QWEN_SPECIALS
    ids = {t: 256 + i for i, t in enumerate(sp)}
    text = dict(_TEXT, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    cfg = dict(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
               video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
               vision_end_token_id=ids["<|vision_end|>"], bos_token_id=ids["<|endoftext|>"],
               eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    processor = "Qwen2VLProcessor" if family == "qwen2-vl" else "Qwen2_5_VLProcessor"
    return Preset(name, family, cls, cfg, sp, "<|im_end|>", _QWEN_TEMPLATE, "Qwen2VLImageProcessorPil",
                  {"min_pixels": 56 * 56, "max_pixels": 224 * 224, "patch_size": 14,
                   "merge_size": 2, "temporal_patch_size": 2},
                  processor_config={"processor_class": processor})


_LLAVA_SPECIALS = ["<s>", "</s>", "<unk>", "<image>", "<pad>"]
_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             image_size=56, patch_size=14, projection_dim=32)


def _llava(name: str, family: str, cls: str, config: dict[str, Any], image_processor: str,
           image_kwargs: dict[str, Any], image_size: tuple[int, int]) -> Preset:
    """LLaVA-1.5 / LLaVA-NeXT: a Llama LM with a BOS post-processor, a CLIP tower with 56-pixel tiles."""
    cfg = dict(text_config=dict(_TEXT, model_type="llama", bos_token_id=256, eos_token_id=257, pad_token_id=260),
               vision_config=_CLIP, image_token_index=259, projector_hidden_act="gelu", vision_feature_layer=-2,
               vision_feature_select_strategy="default", **config, pad_token_id=260)
    processor = "LlavaProcessor" if family == "llava" else "LlavaNextProcessor"
    return Preset(name, family, cls, cfg, _LLAVA_SPECIALS, "</s>", _LLAVA_TEMPLATE, image_processor,
                  {"size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56}, **image_kwargs}, image_size,
                  processor_config={"processor_class": processor, "patch_size": 14, "image_token": "<image>",
                                    "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
                  tokenizer_config={"bos_token": "<s>"})


def _presets() -> dict[str, Preset]:
    qv = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
              temporal_patch_size=2, mlp_ratio=2)
    q25v = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                fullatt_block_indexes=[1])
    intern_sp = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<image>",
                 "<video>"]
    idef_sp = ["<|begin_of_text|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
               "<image>", "<global-img>", "<|finetune_right_pad_id|>"]
    out = [
        _qwen("tiny-qwen2-vl", "qwen2-vl", "Qwen2VLConfig", qv),
        _qwen("tiny-qwen2.5-vl", "qwen2.5-vl", "Qwen2_5_VLConfig", q25v),
        _llava("tiny-llava", "llava", "LlavaConfig", {"image_seq_length": 16}, "CLIPImageProcessorPil", {}, (56, 56)),
        _llava("tiny-llava-next", "llava-next", "LlavaNextConfig", {"image_grid_pinpoints": _LLAVA_NEXT_PINPOINTS},
               "LlavaNextImageProcessorPil", {"image_grid_pinpoints": _LLAVA_NEXT_PINPOINTS}, (112, 112)),
        Preset("tiny-internvl", "internvl", "InternVLConfig",
               dict(text_config=dict(_TEXT, model_type="qwen2", bos_token_id=256, eos_token_id=258,
                                     pad_token_id=256),
                    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=[112, 112], patch_size=[14, 14]),
                    image_token_id=261, image_seq_length=16, downsample_ratio=0.5,
                    vision_feature_layer=-1, tie_word_embeddings=False),
               intern_sp, "<|im_end|>", _INTERNVL_TEMPLATE, "GotOcr2ImageProcessorPil",
               {"size": {"height": 112, "width": 112}, "crop_to_patches": False, "min_patches": 1, "max_patches": 4},
               processor_config={"processor_class": "InternVLProcessor", "image_seq_length": 16},
               tokenizer_config={"extra_special_tokens": {
                   "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}}),
        Preset("tiny-idefics3", "idefics3", "Idefics3Config",
               dict(text_config=dict(_TEXT, model_type="llama", bos_token_id=256, eos_token_id=258,
                                     pad_token_id=262),
                    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=128, patch_size=16),
                    image_token_id=260, scale_factor=2, pad_token_id=262),
               idef_sp, "<end_of_utterance>", _IDEFICS_TEMPLATE, "Idefics3ImageProcessorPil",
               {"do_image_splitting": False, "size": {"longest_edge": 128},
                "max_image_size": {"longest_edge": 128}}, (128, 128),
               processor_config={"processor_class": "Idefics3Processor", "image_seq_len": 16}),
        _smolvlm(),
    ]
    return {p.name: p for p in out}


def _smolvlm() -> Preset:
    """SmolVLM2 classes (SmolVLMConfig, SmolVLMProcessor, SmolVLMImageProcessor), its chat template,
    a pixel shuffle of scale 4 (as the real checkpoints; Idefics3's preset uses 2), splitting off."""
    sp = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>",
          "<image>", "<global-img>"]
    return Preset("tiny-smolvlm", "smolvlm", "SmolVLMConfig",
                  dict(text_config=dict(_TEXT, model_type="llama", bos_token_id=257, eos_token_id=259,
                                        pad_token_id=258),
                       vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=256, patch_size=16),
                       image_token_id=261, scale_factor=4, pad_token_id=258),
                  sp, "<end_of_utterance>", _SMOLVLM_TEMPLATE, "SmolVLMImageProcessorPil",
                  {"do_image_splitting": False, "size": {"longest_edge": 256},
                   "max_image_size": {"longest_edge": 256}}, (256, 256),
                  processor_config={"processor_class": "SmolVLMProcessor", "image_seq_len": 16})


PRESETS = _presets()


def is_preset(name: str) -> bool:
    return name in PRESETS


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def build_config(preset: Preset) -> Any:
    import transformers

    cfg = getattr(transformers, preset.config_class)(**preset.config)
    from rlens.families import family_by_name

    cfg.architectures = [family_by_name(preset.family).model_class]
    return cfg


def build_model(preset: Preset) -> Any:
    """The preset's model with seeded random weights (deterministic on one torch version)."""
    import torch
    import transformers

    from rlens.families import family_by_name

    cfg = build_config(preset)
    cls = getattr(transformers, family_by_name(preset.family).model_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = cls(cfg)
        # Defaults init tiny std (0.02): scale up so different layers and reductions matter.
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name:
                p.data.normal_(0.0, 0.8 / max(p.shape[-1], 1) ** 0.5)
    return model.eval()


def build_tokenizer_json(preset: Preset) -> str:
    """A byte-level BPE tokenizer (256 byte tokens, no merges) plus the preset's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=_byte_of))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(preset.specials)
    bos = preset.tokenizer_config.get("bos_token")
    if bos:  # Llama-style: the tokenizer puts BOS before every encoded text
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, preset.token_id(bos))])
    return tok.to_str()


def _byte_of(ch: str) -> int:
    from rlens.hf_compat import bytes_to_unicode

    inv = {v: k for k, v in bytes_to_unicode().items()}
    return inv[ch]


def save_processor_files(preset: Preset, out: Path) -> None:
    """tokenizer.json, tokenizer_config.json, chat_template.jinja, preprocessor_config.json."""
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(build_tokenizer_json(preset))
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": preset.eos,
            "model_max_length": 2048, "clean_up_tokenization_spaces": False, **preset.tokenizer_config}
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n")
    if preset.processor_config:
        (out / "processor_config.json").write_text(json.dumps(preset.processor_config, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(preset.chat_template)
    proc = getattr(transformers, preset.image_processor)(**preset.image_processor_kwargs)
    proc.save_pretrained(str(out))
