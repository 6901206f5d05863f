"""FLOPs accounting (DESIGN §3.4)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rlens.flops import Sizes, TokenLayout, hollow_pairs, layer_flops, plan_flops
from rlens.plan import LayerPlan, ModelInfo, Plan
from rlens.reference import hollow_allowed

SZ = Sizes(hidden=896, q_width=896, kv_width=128, ffn=4864, num_layers=24)


@settings(max_examples=60, deadline=None)
@given(before=st.integers(0, 20), visual=st.integers(0, 40), after=st.integers(0, 20), window=st.integers(1, 50))
def test_hollow_pairs_equal_mask_count(before, visual, after, window):
    t = TokenLayout(visual=visual, text_after=after, text_before=before)
    n = t.total
    assert hollow_pairs(t, window) == int(hollow_allowed(n, n, (before, visual), window).sum())


def test_unreduced_ratio_is_one_and_terms_are_exact():
    t = TokenLayout(visual=1024, text_after=64)
    r = plan_flops(None, SZ, t)
    assert r.ratio == 1.0 and r.ratio_fastv == 1.0
    lf = r.layers[0]
    n = 1088
    assert lf.projections == 2 * n * 896 * (2 * 896 + 2 * 128)
    assert lf.attention == 4 * 896 * n * (n + 1) // 2
    assert lf.ffn == 6 * 896 * 4864 * n
    assert lf.fastv == 4 * n * 896**2 + 2 * n * n * 896 * 1.0 + 2 * n * 896 * 4864


def test_reduced_layer_counts_kept_units_and_window():
    t = TokenLayout(visual=1024, text_after=64)
    lp = LayerPlan(0, hollow_window=256, ffn_keep=976, ffn_indices=tuple(range(976)))
    lf = layer_flops(SZ, t, lp)
    assert lf.ffn == 6 * 896 * 4864 * 64 + 6 * 896 * 976 * 1024
    assert lf.attention == 4 * 896 * hollow_pairs(t, 256)
    dyn = layer_flops(SZ, t, lp, ffn_mode="dynamic", probes=64)
    assert dyn.ffn > lf.ffn


def test_half_the_layers_reduced_lowers_the_ratio():
    info = ModelInfo("A", 24, 896, 4864, "")
    layers = tuple(LayerPlan(i, hollow_window=256, ffn_keep=976, ffn_indices=tuple(range(976))) for i in range(12, 24))
    r = plan_flops(Plan(model=info, layers=layers), SZ, TokenLayout(visual=1024, text_after=64))
    assert 0.5 < r.ratio < 0.8
    assert 0.5 < r.ratio_fastv < 0.85
