"""Model families: registry, coverage by presets, visual spans, InternLM2 weight mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlens.errors import InputError, ModelError
from rlens.families import all_families, family_for_config
from rlens.families.internvl import internlm2_to_native
from rlens.presets import PRESETS


def test_every_family_has_a_preset_or_a_config_test():
    covered = {p.family for p in PRESETS.values()}
    assert set(all_families()) == covered


def test_unsupported_architecture_lists_supported():
    class Cfg:
        architectures = ["WhisperForConditionalGeneration"]
        model_type = "whisper"

    with pytest.raises(ModelError, match="supports: .*Qwen2VLForConditionalGeneration"):
        family_for_config(Cfg())


def test_llava_next_config_maps_to_family():
    import transformers

    cfg = transformers.LlavaNextConfig()
    assert family_for_config(cfg).name == "llava-next"


def test_visual_span_found_and_rejects_several(any_preset):
    loaded, _, prepared, _ = any_preset
    fam, cfg = loaded.family, loaded.config
    span = fam.find_visual_span(prepared.input_ids, cfg)
    assert span.as_tuple() == prepared.visual_span and span.length > 0
    ids = prepared.input_ids.copy()
    s, n = prepared.visual_span
    ids[0, s + n // 2] = 65  # a text token inside the image: two separated spans
    with pytest.raises(InputError, match="2 separated visual spans"):
        fam.find_visual_span(ids, cfg)
    text_only = np.full((1, 5), 65)
    assert fam.find_visual_span(text_only, cfg).length == 0


def test_prompt_without_one_image_slot(any_preset):
    from rlens.families.base import expand_image_marker

    loaded = any_preset[0]
    with pytest.raises(InputError, match="0 image slots"):
        expand_image_marker("no image here", "<|image_pad|>", 4)


def test_check_supported_rejects_non_swiglu(any_preset):
    loaded = any_preset[0]
    text = loaded.family.text_config(loaded.config)
    old = text.hidden_act
    text.hidden_act = "gelu"
    try:
        with pytest.raises(ModelError, match="SwiGLU"):
            loaded.family.check_supported(loaded.model)
    finally:
        text.hidden_act = old


def _internlm2_logits(w: dict, ids: torch.Tensor, heads: int, kv_heads: int, head_dim: int, layers: int,
                      eps: float = 1e-6, theta: float = 10000.0) -> torch.Tensor:
    """InternLM2's forward as its modeling file writes it, straight from the packed checkpoint layout
    (the oracle; it shares no code with rlens): ``tok_embeddings``; per layer ``attention_norm`` ->
    ``wqkv`` read as [.., Hkv, G + 2, D] (the G query heads of a KV group, then its key, then its
    value) -> RoPE -> causal GQA -> ``wo``, residual; ``ffn_norm`` -> ``w2(silu(w1 x) * w3 x)``,
    residual; ``norm``; ``output``."""
    import torch.nn.functional as F

    seq, groups, half = ids.shape[1], heads // kv_heads, head_dim // 2
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    ang = torch.arange(seq).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(t):
        return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

    def rms(t, g):
        return g * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps))

    x = w["model.tok_embeddings.weight"][ids]
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)
    for i in range(layers):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "attention_norm.weight"])
        qkv = (h @ w[p + "attention.wqkv.weight"].T).reshape(1, seq, kv_heads, groups + 2, head_dim)
        q = rope(qkv[:, :, :, :groups].reshape(1, seq, heads, head_dim).transpose(1, 2))
        k = rope(qkv[:, :, :, -2].transpose(1, 2)).repeat_interleave(groups, 1)
        v = qkv[:, :, :, -1].transpose(1, 2).repeat_interleave(groups, 1)
        s = (q @ k.transpose(-1, -2) / head_dim**0.5).masked_fill(future, float("-inf"))
        x = x + (s.softmax(-1) @ v).transpose(1, 2).reshape(1, seq, -1) @ w[p + "attention.wo.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        f = F.silu(h @ w[p + "feed_forward.w1.weight"].T) * (h @ w[p + "feed_forward.w3.weight"].T)
        x = x + f @ w[p + "feed_forward.w2.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["output.weight"].T


def test_internlm2_checkpoint_loads_into_native_layers():
    """A random checkpoint in InternLM2's own layout (packed wqkv, w1/w2/w3, attention_norm, ffn_norm),
    mapped by :func:`internlm2_to_native` into a native Llama decoder, gives the logits of an
    independent InternLM2 forward over the packed weights."""
    import transformers

    hidden, inter, layers, heads, kv, d, vocab = 64, 96, 2, 8, 2, 8, 100
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, mean=0.0):
        return mean + 0.2 * torch.randn(*shape, generator=g)

    packed = {"model.tok_embeddings.weight": rnd(vocab, hidden), "model.norm.weight": rnd(hidden, mean=1.0),
              "output.weight": rnd(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        packed.update({p + "attention.wqkv.weight": rnd(kv * (heads // kv + 2) * d, hidden),
                       p + "attention.wo.weight": rnd(hidden, heads * d),
                       p + "feed_forward.w1.weight": rnd(inter, hidden), p + "feed_forward.w3.weight": rnd(inter, hidden),
                       p + "feed_forward.w2.weight": rnd(hidden, inter),
                       p + "attention_norm.weight": rnd(hidden, mean=1.0), p + "ffn_norm.weight": rnd(hidden, mean=1.0)})
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                                   rms_norm_eps=1e-6, tie_word_embeddings=False)
    dst = transformers.LlamaForCausalLM(cfg).eval()
    mapped = internlm2_to_native(packed, heads, kv, d)
    state = {("model." + k if not k.startswith("lm_head") else k): v for k, v in mapped.items()}
    missing, unexpected = dst.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    ids = torch.randint(0, vocab, (1, 12), generator=g)
    with torch.no_grad():
        got = dst(ids).logits
    want = _internlm2_logits(packed, ids, heads, kv, d, layers)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_internlm2_unknown_keys_are_named():
    with pytest.raises(ModelError, match="vision_model.x"):
        internlm2_to_native({"vision_model.x": torch.zeros(1)}, 8, 2, 8)


def test_wqkv_unpacking_follows_internlm2_attention():
    """InternLM2's attention reads ``qkv = wqkv(x)`` as [.., Hkv, G + 2, D]: the G query heads of a KV
    group, then its key, then its value. Check unpacking against that reading directly."""
    from rlens.families.internvl import unpack_wqkv

    hkv, groups, d, hidden = 2, 3, 4, 10
    gen = torch.Generator().manual_seed(0)
    wqkv = torch.randn(hkv * (groups + 2) * d, hidden, generator=gen)
    x = torch.randn(5, hidden, generator=gen)
    qkv = (x @ wqkv.t()).reshape(5, hkv, groups + 2, d)
    q_ref = qkv[:, :, :groups].reshape(5, hkv * groups, d)
    k_ref, v_ref = qkv[:, :, -2], qkv[:, :, -1]
    q, k, v = unpack_wqkv(wqkv, hkv * groups, hkv, d)
    # the same products summed in another order: equal to float rounding, not bit for bit
    assert torch.allclose((x @ q.t()).reshape(5, -1, d), q_ref, atol=1e-5)
    assert torch.allclose((x @ k.t()).reshape(5, hkv, d), k_ref, atol=1e-5)
    assert torch.allclose((x @ v.t()).reshape(5, hkv, d), v_ref, atol=1e-5)


def test_local_directory_loads_like_the_preset(tmp_path, any_preset):
    """A save_pretrained directory (safetensors) loads through the same path users take."""
    from rlens.models import load_model

    loaded, _, _, inputs = any_preset
    loaded.model.save_pretrained(tmp_path)
    loaded.save_processor(tmp_path)
    again = load_model(str(tmp_path))
    assert again.family is loaded.family and again.info() == loaded.info()
    with torch.no_grad():
        assert torch.equal(again.model(**inputs).logits, loaded.model(**inputs).logits)


def test_directory_without_safetensors_is_refused(tmp_path, any_preset):
    from rlens.models import load_model

    any_preset[0].model.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="no .safetensors"):
        load_model(str(tmp_path))


def test_remote_code_needs_the_flag(tmp_path):
    import json

    from rlens.models import load_model

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["MiniCPMV"], "model_type": "minicpmv",
        "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMVConfig"}}))
    with pytest.raises(ModelError, match="trust-remote-code"):
        load_model(str(tmp_path))


def test_llava_next_with_mistral_runs_through_the_reference():
    """LLaVA-NeXT (Mistral language model) from a config: the reduced decoder is exact at W >= N_v,
    rho = 1 and changes with a real reduction (text-only forward, explicit visual span)."""
    import transformers

    from rlens.models import model_info
    from rlens.plan import LayerPlan, Plan
    from rlens.reference import reduced

    cfg = transformers.LlavaNextConfig(
        text_config=dict(model_type="mistral", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=300, sliding_window=None),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        image_token_index=299, image_grid_pinpoints=[[28, 28]])
    torch.manual_seed(0)
    model = transformers.LlavaNextForConditionalGeneration(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.15)
    fam = family_for_config(cfg)
    assert fam.name == "llava-next"
    fam.check_supported(model)
    info = model_info(model, fam)
    ids = torch.randint(0, 290, (1, 30))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        exact = Plan(model=info, layers=tuple(LayerPlan(i, hollow_window=20, ffn_keep=96, ffn_indices=tuple(range(96)))
                                              for i in range(2)))
        with reduced(model, exact, fam) as state:
            state.visual_span = (5, 20)
            got = model(input_ids=ids).logits
            # Mistral's own attention runs SDPA without a mask (is_causal) under transformers 5.24;
            # the reference passes its explicit mask, so the sums differ in the last bits (1.8e-7).
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
        real = Plan(model=info, layers=(LayerPlan(1, hollow_window=2, ffn_keep=16, ffn_indices=tuple(range(16))),))
        with reduced(model, real, fam) as state:
            state.visual_span = (5, 20)
            out = model(input_ids=ids).logits
    assert (out - ref).abs().max() > 1e-3
    assert torch.equal(out[:, :5], ref[:, :5])  # text before the image is untouched
