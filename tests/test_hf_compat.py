"""The transformers contract: every assumption of rlens/hf_compat.py holds for the installed
transformers, and no other rlens module touches transformers' internals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from rlens import hf_compat

SRC = Path(__file__).resolve().parents[1] / "src" / "rlens"


def _internal_touches(path: Path) -> list[str]:
    """Imports of transformers submodules, private transformers attributes, silent cache lookups."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers."):
            found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
        if isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                      if a.name.startswith("transformers.")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_attn_implementation"):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in hf_compat.CACHE_KWARGS):
            found.append(f"{path.name}:{node.lineno} .get({node.args[0].value!r})")
        if isinstance(node, ast.keyword) and node.arg in hf_compat.CACHE_KWARGS:
            found.append(f"{path.name}:{node.lineno} {node.arg}=")
    return found


def test_only_hf_compat_touches_transformers_internals():
    touches = [t for p in sorted(SRC.rglob("*.py")) if p.name != "hf_compat.py" for t in _internal_touches(p)]
    assert touches == [], "route these through rlens/hf_compat.py:\n" + "\n".join(touches)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from transformers.modeling_utils import X\nimport transformers.cache_utils\n"
                   "c = kwargs.get('past_key_values')\nm(cache=c)\ncfg._attn_implementation_internal = 'x'\n")
    assert len(_internal_touches(bad)) == 5


def test_cache_keyword_of_layers_and_text_model(preset):
    loaded = preset[0]
    fam = loaded.family
    lm = fam.language_model(loaded.model)
    name = hf_compat.cache_kwarg(fam.decoder_layers(loaded.model)[0])
    assert name in hf_compat.CACHE_KWARGS
    assert hf_compat.cache_kwarg(lm) == name  # layers and text model agree on the keyword


def test_layer_sees_the_cache_it_was_given(preset):
    """A real forward with a cache: the layer's kwargs carry it under the keyword compat names."""
    loaded = preset[0]
    fam, model = loaded.family, loaded.model
    lm, layer = fam.language_model(model), fam.decoder_layers(model)[0]
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a, kw: seen.append(hf_compat.layer_cache(m, kw)),
                                             with_kwargs=True)
    cache = hf_compat.new_cache(fam.text_config(model.config))
    h = fam.sizes(model.config)["hidden_size"]
    try:
        with torch.no_grad():
            out = hf_compat.call_with_cache(lm, cache, inputs_embeds=torch.randn(1, 5, h), use_cache=True)
    finally:
        handle.remove()
    assert seen and seen[0] is cache
    assert hf_compat.output_cache(out) is cache
    assert hf_compat.cache_seq_length(cache, 0) == 5 and hf_compat.cache_seq_length(cache, 10**6) == 0
    kv = hf_compat.cache_tensors(cache)
    s = fam.sizes(model.config)
    assert len(kv) == s["num_layers"]
    assert tuple(kv[0][0].shape) == (1, s["num_kv_heads"], 5, s["head_dim"])


def test_attention_registry_and_implementation(preset):
    loaded = preset[0]
    attn = loaded.family.attention(loaded.family.decoder_layers(loaded.model)[0])
    impl = hf_compat.attn_implementation(attn.config)
    assert callable(hf_compat.attention_function(impl))
    assert callable(hf_compat.attention_function("eager"))
    cfg = hf_compat.with_attn_implementation(attn.config, "rlens_test_name")
    assert hf_compat.attn_implementation(cfg) == "rlens_test_name"
    assert hf_compat.attn_implementation(attn.config) == impl  # a copy: the model is untouched
    reg = hf_compat.attention_registry()
    with hf_compat.attention_functions({"rlens_test_fn": len}):
        assert reg["rlens_test_fn"] is len
        with hf_compat.attention_functions({"rlens_test_fn": len}):  # nested: no double registration
            pass
        assert "rlens_test_fn" in reg
    assert "rlens_test_fn" not in reg
    with hf_compat.attention_functions({"rlens_test_fn": len}):
        with pytest.raises(hf_compat.CompatError, match="already registered"):
            with hf_compat.attention_functions({"rlens_test_fn": abs}):  # another function, same name
                pass
    s = loaded.family.sizes(loaded.model.config)
    assert hf_compat.attention_scaling(attn) == pytest.approx(s["head_dim"] ** -0.5)


def test_rotary_tables(preset):
    loaded = preset[0]
    lm = loaded.family.language_model(loaded.model)
    s = loaded.family.sizes(loaded.model.config)
    assert tuple(hf_compat.rotary_inv_freq(lm).shape) == (s["head_dim"] // 2,)
    assert hf_compat.rotary_attention_scaling(lm) == 1.0
    if loaded.family.rope_kind == "mrope":
        assert sum(hf_compat.mrope_section(lm)) == s["head_dim"] // 2
    else:
        with pytest.raises(hf_compat.CompatError, match="mrope_section"):
            hf_compat.mrope_section(lm)


def test_image_features(preset):
    loaded, proc, prepared, inputs = preset
    vision = {k: v for k, v in inputs.items() if k in prepared.vision and k != "num_patches"}
    with torch.no_grad():
        out = hf_compat.image_features(loaded.model, **vision)
    feats = getattr(out, "pooler_output", out)
    feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats
    assert feats.reshape(-1, feats.shape[-1]).shape[0] == prepared.visual_span[1]


def test_bytes_to_unicode_is_a_byte_table():
    table = hf_compat.bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256


def test_a_broken_assumption_fails_loudly_with_the_version():
    class Layer(torch.nn.Module):
        def forward(self, hidden_states, past_kv=None):  # neither known keyword
            return hidden_states

    with pytest.raises(hf_compat.CompatError, match=r"transformers \d+\.\d+.*past_kv"):
        hf_compat.cache_kwarg(Layer())

    class Renamed(torch.nn.Module):
        def forward(self, hidden_states, cache=None):
            return hidden_states

    with pytest.raises(hf_compat.CompatError, match="called with"):
        hf_compat.layer_cache(Renamed(), {"past_key_values": object()})
    assert hf_compat.layer_cache(Renamed(), {}) is None

