"""Token pruning (FastV, VTW): plan fields, the PyTorch reference, FLOPs (docs/token_pruning.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlens import hf_compat
from rlens.errors import PlanError
from rlens.export.decoder import geometry
from rlens.export.verify import sample
from rlens.flops import Sizes, TokenLayout, plan_flops
from rlens.models import load_model
from rlens.plan import LayerPlan, ModelInfo, Plan, TokenPruning, kept_visual_tokens, plan_from_dict
from rlens.reference import reduced

SPAN = (3, 14)
INFO = ModelInfo("X", 4, 64, 176, "")


@pytest.fixture(scope="module", params=["tiny-qwen2-vl", "tiny-llava"])
def loaded(request):
    return load_model(request.param)


# ---- plan fields -----------------------------------------------------------------------------
def test_plan_round_trip_and_old_plans_load():
    for tp in (TokenPruning("fastv", 2, 0.5), TokenPruning("vtw", 3, eta=0.003, chosen_by="auto", divergence=0.001)):
        plan = Plan(model=INFO, token_pruning=tp)
        again = plan_from_dict(json.loads(plan.dumps()))
        assert again == plan and again.token_pruning == tp
    old = Plan(model=INFO).to_json()
    assert "token_pruning" not in old and plan_from_dict(old).token_pruning is None


@pytest.mark.parametrize("raw, message", [
    ({"method": "pdrop", "layer": 2}, "method"),
    ({"method": "fastv", "layer": 0, "ratio": 0.5}, "below 1"),
    ({"method": "fastv", "layer": 2}, "needs 'ratio'"),
    ({"method": "fastv", "layer": 2, "ratio": 1.5}, "outside"),
    ({"method": "vtw", "layer": 5}, "above 4"),
    ({"method": "vtw", "layer": 2, "ratio": 0.5}, "no 'ratio'"),
    ({"method": "vtw", "layer": 2, "chosen_by": "me"}, "chosen_by"),
    ({"method": "vtw", "layer": 2, "extra": 1}, "unknown keys"),
    ([1], "must be an object"),
])
def test_token_pruning_validation(raw, message):
    data = Plan(model=INFO).to_json()
    data["token_pruning"] = raw
    with pytest.raises(PlanError, match=message):
        plan_from_dict(data)


def test_kept_count_rule():
    assert [kept_visual_tokens(10, r) for r in (0.0, 0.5, 0.7, 0.75, 1.0)] == [10, 5, 3, 3, 0]
    assert kept_visual_tokens(576, 0.5) == 288 and kept_visual_tokens(7, 0.5) == 4


# ---- reference -------------------------------------------------------------------------------
def _run(loaded, plan, feeds, span=SPAN, cache=None):
    fam, model = loaded.family, loaded.model
    cache = cache if cache is not None else hf_compat.new_cache(fam.text_config(model.config))
    with torch.no_grad(), reduced(model, plan, fam) as st:
        st.visual_span = span
        out = hf_compat.call_with_cache(
            fam.language_model(model), cache, inputs_embeds=torch.from_numpy(feeds["inputs_embeds"]),
            attention_mask=torch.from_numpy(feeds["attention_mask"]),
            position_ids=torch.from_numpy(feeds["position_ids"]), use_cache=True)
        rows = None if st.pruning is None or st.pruning.rows is None else st.pruning.rows.clone()
    return out.last_hidden_state, hf_compat.output_cache(out), rows


def test_no_op_settings_are_exact(loaded):
    feeds = sample(geometry(loaded), 0, 1, 24, SPAN).feeds
    base, _, _ = _run(loaded, Plan(model=loaded.info()), feeds)
    for tp in (TokenPruning("fastv", 2, 0.0), TokenPruning("vtw", 4), TokenPruning("fastv", 4, 0.5)):
        h, cache, _ = _run(loaded, Plan(model=loaded.info(), token_pruning=tp), feeds)
        assert torch.equal(h, base), tp
        assert [cache.get_seq_length(i) for i in range(4)] == [24] * 4


def test_vtw_at_layer_0_equals_the_model_without_visual_tokens(loaded):
    """Independent check: HF's own forward on the input with the visual rows removed."""
    feeds = sample(geometry(loaded), 1, 1, 24, SPAN).feeds
    h, cache, _ = _run(loaded, Plan(model=loaded.info(), token_pruning=TokenPruning("vtw", 0)), feeds)
    keep = np.r_[0:3, 17:24]
    cut = {"inputs_embeds": feeds["inputs_embeds"][:, keep], "attention_mask": feeds["attention_mask"][:, keep],
           "position_ids": feeds["position_ids"][..., keep]}
    want, _, _ = _run(loaded, Plan(model=loaded.info()), cut, span=(0, 0))
    torch.testing.assert_close(h, want, rtol=0, atol=1e-5)
    assert [cache.get_seq_length(i) for i in range(4)] == [10] * 4


def _masked_formulation(loaded, feeds, first, dropped_cols):
    """FastV's 'inplace' form: all rows run every layer; from ``first`` on, no query attends a
    dropped key. Kept rows must then equal the pruned run (gathers, rotary and cache untouched)."""
    fam, model = loaded.family, loaded.model
    s = feeds["inputs_embeds"].shape[1]
    allowed = torch.tril(torch.ones(s, s, dtype=torch.bool))
    allowed[:, dropped_cols] = False
    allowed |= torch.eye(s, dtype=torch.bool)  # dropped rows keep a finite (unused) output
    handles = []

    def hook(module, args, kwargs):
        return args, dict(kwargs, attention_mask=allowed[None, None])

    for layer in fam.decoder_layers(model)[first:]:
        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        h, _, _ = _run(loaded, Plan(model=loaded.info()), feeds)
    finally:
        for hd in handles:
            hd.remove()
    return h


def _eager_scores(loaded, feeds, layer):
    """The score layer's attention from HF's eager implementation (output_attentions)."""
    fam, model = loaded.family, loaded.model
    lm = fam.language_model(model)
    old = hf_compat.attn_implementation(lm.config)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm(inputs_embeds=torch.from_numpy(feeds["inputs_embeds"]),
                     attention_mask=torch.from_numpy(feeds["attention_mask"]),
                     position_ids=torch.from_numpy(feeds["position_ids"]), output_attentions=True)
    finally:
        model.set_attn_implementation(old)
    return out.attentions[layer][0, :, -1].mean(0)  # [T]


@pytest.mark.parametrize("K, R", [(1, 0.5), (2, 0.75)])
def test_fastv_matches_independent_formulation(loaded, K, R):
    feeds = sample(geometry(loaded), 2, 1, 24, SPAN).feeds
    tp = TokenPruning("fastv", K, R)
    h, cache, rows = _run(loaded, Plan(model=loaded.info(), token_pruning=tp), feeds)
    scores = _eager_scores(loaded, feeds, K - 1)[3:17]
    keep = kept_visual_tokens(14, R)
    want_vis = sorted(torch.sort(-scores, stable=True).indices[:keep].tolist())
    assert rows[0].tolist() == [0, 1, 2] + [3 + v for v in want_vis] + list(range(17, 24))
    dropped = sorted(set(range(3, 17)) - {3 + v for v in want_vis})
    ref = _masked_formulation(loaded, feeds, K, dropped)
    torch.testing.assert_close(h[0], ref[0, rows[0]], rtol=0, atol=2e-5)
    assert [cache.get_seq_length(i) for i in range(4)] == [24] * K + [24 - len(dropped)] * (4 - K)


def test_combined_plan_and_decode_steps(loaded):
    """RedundancyLens layers after the pruning layer act on the kept visual tokens; decode steps
    attend to the shorter caches and equal the masked formulation's decode."""
    info = loaded.info()
    plan = Plan(model=info, ffn_mode="dynamic", ffn_probes=4, token_pruning=TokenPruning("fastv", 2, 0.5),
                layers=tuple(LayerPlan(i, hollow_window=3, ffn_keep=32) for i in range(4)))
    geo = geometry(loaded)
    s = sample(geo, 3, 1, 24, SPAN)
    h, cache, rows = _run(loaded, plan, s.feeds)
    alone, _, _ = _run(loaded, Plan(model=info, layers=plan.layers, ffn_mode="dynamic", ffn_probes=4), s.feeds)
    assert h.shape[1] == 24 - 7 and not torch.allclose(h[:, -1], alone[:, -1], atol=1e-3)
    past = int(s.feeds["position_ids"].max()) + 1
    for step in range(2):
        kv = [t.numpy() for pair in hf_compat.cache_tensors(cache) for t in pair]
        d = sample(geo, 10 + step, 1, 1, (0, 0), kv, past + step)
        d.feeds["attention_mask"] = np.ones((1, 24 + step + 1), dtype=np.int64)
        h, cache, _ = _run(loaded, plan, d.feeds, span=(0, 0), cache=cache)
        assert [cache.get_seq_length(i) for i in range(4)] == [25 + step] * 2 + [18 + step] * 2
        assert torch.isfinite(h).all()


# ---- FLOPs -----------------------------------------------------------------------------------
def _fastv_ratio(layers, d, m, visual, text, K=2, R=0.5):
    sz = Sizes(hidden=d, q_width=d, kv_width=d, ffn=m, num_layers=layers)
    plan = Plan(model=ModelInfo("X", layers, d, m, ""), token_pruning=TokenPruning("fastv", K, R))
    return plan_flops(plan, sz, TokenLayout(visual=visual, text_after=text))


@pytest.mark.parametrize("name, layers, d, m, visual, text, published", [
    ("LLaVA-1.5-13B (FastV: 45% FLOPs reduction)", 40, 5120, 13824, 576, 40, 0.55),
    ("InternVL2-8B (RedundancyLens table: 53%)", 32, 4096, 14336, 1792, 64, 0.53),
    ("Qwen2-VL-7B (RedundancyLens table: 53%)", 28, 3584, 18944, 2048, 64, 0.53),
])
def test_fastv_convention_reproduces_published_ratios(name, layers, d, m, visual, text, published):
    r = _fastv_ratio(layers, d, m, visual, text)
    assert abs(r.ratio_fastv - published) < 0.005, (name, r.ratio_fastv)
    n, nh = visual + text, visual // 2 + text
    f = lambda k: 4 * k * d * d + 2 * k * k * d + 2 * k * d * m  # noqa: E731
    assert r.ratio_fastv == pytest.approx((2 * f(n) + (layers - 2) * f(nh)) / (layers * f(n)), rel=1e-12)


def test_exact_flops_count_pruned_layers_and_score_row():
    sz = Sizes(hidden=64, q_width=64, kv_width=32, ffn=176, num_layers=4)
    t = TokenLayout(visual=14, text_after=7, text_before=3)
    full = plan_flops(None, sz, t)
    vtw = plan_flops(Plan(model=INFO, token_pruning=TokenPruning("vtw", 2)), sz, t)
    small = plan_flops(None, sz, TokenLayout(visual=0, text_after=7, text_before=3))
    assert vtw.layers[0] == full.layers[0] and vtw.layers[3].total == small.layers[3].total
    fv = plan_flops(Plan(model=INFO, token_pruning=TokenPruning("fastv", 2, 0.5)), sz, t)
    assert fv.layers[1].attention == full.layers[1].attention + 2 * 64 * 24
    assert fv.layers[2].projections == full.layers[2].projections * 17 / 24
    both = Plan(model=INFO, token_pruning=TokenPruning("fastv", 2, 0.5),
                layers=(LayerPlan(3, hollow_window=2, ffn_keep=32, ffn_indices=tuple(range(32))),))
    assert plan_flops(both, sz, t).ratio < fv.ratio < 1.0
