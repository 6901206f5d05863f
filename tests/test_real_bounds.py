"""Dynamic resolution at the processor's real bounds (issue 11): a Qwen2.5-VL-shaped checkpoint
directory whose processor has Qwen2-VL's shipped min/max pixels (3136 .. 12845056) exports once and
generates Hugging Face's greedy tokens for a large image (~1.7k visual tokens, the paper's range),
windowed vision attention included. The weights are the tiny preset's (layer sizes are not what
this test is about); the image bounds, grid and token counts are the real ones.
"""

from __future__ import annotations

import json

import pytest

from helpers import SMOLVLM2_PREPROCESSOR, hf_greedy, sample_image, until_eos

REAL = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}


@pytest.mark.slow
def test_large_image_at_the_real_processor_bounds(tmp_path):
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import empty_plan
    from rlens.runtime import Session

    preset = load_model("tiny-qwen2.5-vl")
    ckpt = tmp_path / "ckpt"
    preset.model.save_pretrained(str(ckpt))
    preset.save_processor(ckpt)
    cfg = json.loads((ckpt / "preprocessor_config.json").read_text())
    cfg["size"] = {"shortest_edge": REAL["min_pixels"], "longest_edge": REAL["max_pixels"]}
    (ckpt / "preprocessor_config.json").write_text(json.dumps(cfg))
    loaded = load_model(str(ckpt))
    out = bundle_from_plan(loaded, empty_plan(loaded.info()), tmp_path / "bundle", ExportConfig())
    with Session.from_bundle(out) as sess:
        assert sess.manifest.raw["vision"]["bounds"] == REAL
        assert sess.manifest.raw["vision"]["axes"]["merged_patches"] == [1, 16384]
        prompt = sess.prepare(sample_image(size=(1288, 1008)), "What is in the image?")
        assert prompt.pixels.grid == (1, 46, 36) and prompt.tokens.span[1] == 1656
        got = list(sess.generate_ids(prompt, 4))
        eos = int(sess.manifest.eos_token_id)
    assert got == until_eos(hf_greedy(loaded, prompt, 4, eos), eos)


# SmolVLM2-500M-Video-Instruct's shapes and processor files as its checkpoint ships them (config.json,
# preprocessor_config.json, processor_config.json, special-token ids): 32 text layers, a 49280-word
# vocabulary, 512-pixel tiles of 16-pixel patches, pixel shuffle 4 (64 visual tokens per tile),
# splitting on with a 2048-pixel longest edge. Widths are tiny: the processor, the token ids, the
# layer count and the vocabulary are what this test is about.
SMOLVLM2_SPECIALS = {"<global-img>": 49152, **{f"<row_{r}_col_{c}>": 49152 + (r - 1) * 6 + c
                                               for r in range(1, 7) for c in range(1, 7)},
                     "<fake_token_around_image>": 49189, "<image>": 49190, "<end_of_utterance>": 49279}


def _smolvlm2_tokenizer(folder):
    """Byte-level BPE with SmolVLM2's vocabulary size and its special tokens at their real ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(("<|endoftext|>", "<|im_start|>", "<|im_end|>"))}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    vocab.update({f"<unused_{i}>": i for i in range(len(vocab), 49152)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # as in the real tokenizer.json, the three base specials are added (special) tokens too
    wanted = {t: vocab[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    wanted.update(SMOLVLM2_SPECIALS, **{f"<|reserved_special_token_{i}|>": 49191 + i for i in range(88)})
    for token, token_id in sorted(wanted.items(), key=lambda kv: kv[1]):
        tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        assert tok.token_to_id(token) == token_id, token
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "model_max_length": 8192,
        "clean_up_tokenization_spaces": False}))


def _smolvlm2_checkpoint(folder):
    import torch
    import transformers

    from rlens.presets import PRESETS

    text = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=32, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=49280, max_position_embeddings=8192, rms_norm_eps=1e-5,
                rope_theta=100000.0, model_type="llama", bos_token_id=1, eos_token_id=49279, pad_token_id=2,
                tie_word_embeddings=False)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=512,
                  patch_size=16)
    cfg = transformers.SmolVLMConfig(text_config=text, vision_config=vision, image_token_id=49190, scale_factor=4,
                                     pad_token_id=2, tie_word_embeddings=False)
    cfg.architectures = ["SmolVLMForConditionalGeneration"]
    torch.manual_seed(0)
    model = transformers.SmolVLMForConditionalGeneration(cfg).eval()
    for name, p in model.named_parameters():  # as the presets: weights large enough that layers matter
        if p.dim() >= 2 and "embed" not in name:
            p.data.normal_(0.0, 0.8 / p.shape[-1] ** 0.5)
    model.save_pretrained(str(folder))
    _smolvlm2_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(SMOLVLM2_PREPROCESSOR))
    (folder / "processor_config.json").write_text(json.dumps({"image_seq_len": 64, "processor_class": "SmolVLMProcessor"}))
    (folder / "chat_template.jinja").write_text(PRESETS["tiny-smolvlm"].chat_template)
    return model


@pytest.mark.slow
def test_smolvlm2_shaped_checkpoint_exports_unsplit_with_hugging_faces_answers(tmp_path):
    """SmolVLM2's real processor (splitting on, 2048/512) and shapes: ``--no-image-splitting``
    exports it; every image is one 512-pixel tile = 64 visual tokens where the split processor gives
    (rows*cols+1)*64 (up to 832 here); ids, pixels and greedy tokens equal Hugging Face's unsplit processor + generate."""
    import numpy as np
    import torch

    from helpers import hf_inputs, hf_processor
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import empty_plan
    from rlens.runtime import Session

    ckpt = tmp_path / "smolvlm2"
    model = _smolvlm2_checkpoint(ckpt)
    loaded = load_model(str(ckpt))
    out = bundle_from_plan(loaded, empty_plan(loaded.info()), tmp_path / "bundle", ExportConfig(image_splitting=False))
    hf = hf_processor(ckpt)
    split_counts = []
    with Session.from_bundle(out) as sess:
        assert sess.manifest.raw["vision"]["image_splitting"] is False and sess.manifest.raw["family"] == "smolvlm"
        for i, size in enumerate([(90, 120), (1000, 1500), (1400, 300)]):
            image = sample_image(seed=i, size=size)
            split_counts.append(int(np.count_nonzero(hf_inputs(hf, image, "Hi")["input_ids"] == 49190)))
            want = hf_inputs(hf, image, "What is in the image?", do_image_splitting=False)
            got = sess.prepare(image, "What is in the image?")
            assert got.input_ids.tolist() == want["input_ids"].tolist() and got.tokens.span[1] == 64, size
            np.testing.assert_array_equal(got.pixels.processed["pixel_values"], want["pixel_values"])
            inputs = {k: torch.from_numpy(np.asarray(want[k]))
                      for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")}
            with torch.no_grad():
                ids = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=49279,
                                     pad_token_id=2)[0, want["input_ids"].shape[1]:].tolist()
            assert list(sess.generate_ids(got, 6)) == until_eos(ids, 49279), size
    # split (as the checkpoint ships): 2048x1536 -> 4x3 tiles + global; 2048x438 -> 4x1 + global
    assert split_counts == [13 * 64, 13 * 64, 5 * 64], split_counts
