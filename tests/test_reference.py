"""The PyTorch reference of the reductions (DESIGN §3.1, §3.2): exactness and an independent check."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from rlens.plan import LayerPlan, Plan, ffn_keep_for
from rlens.reference import hollow_allowed, hollow_attention, probe_positions, reduced, top_k_lower_index_first


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _full_plan(info, window, rho, mode="static"):
    m = info.intermediate_size
    k = ffn_keep_for(rho, m)
    layers = []
    for i in range(info.num_layers):
        idx = tuple(range(0, m, max(1, m // k)))[:k] if mode == "static" else None
        if idx is not None and len(idx) < k:
            idx = tuple(sorted(set(idx) | set(range(m - (k - len(idx)), m))))[:k]
        layers.append(LayerPlan(i, hollow_window=window, ffn_keep=k, ffn_indices=idx))
    return Plan(model=info, layers=tuple(layers), ffn_mode=mode, ffn_probes=4)


def test_empty_plan_is_bit_identical(preset):
    loaded, _, _, inputs = preset
    ref = _logits(loaded.model, inputs)
    with reduced(loaded.model, Plan(model=loaded.info())):
        out = _logits(loaded.model, inputs)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_window_covering_span_and_rho_one_are_exact(preset, mode):
    loaded, _, prepared, inputs = preset
    info = loaded.info()
    n_visual = prepared.visual_span[1]
    ref = _logits(loaded.model, inputs)
    with reduced(loaded.model, _full_plan(info, window=n_visual, rho=1.0, mode=mode)):
        out = _logits(loaded.model, inputs)
    assert (out - ref).abs().max().item() <= 1e-6
    after = _logits(loaded.model, inputs)
    assert torch.equal(after, ref), "leaving reduced() must restore the model"


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_real_reduction_differs_and_matches_independent_computation(preset, mode):
    loaded, _, prepared, inputs = preset
    info = loaded.info()
    plan = _full_plan(info, window=3, rho=0.2, mode=mode)
    plan = plan.with_layers([lp for lp in plan.layers if lp.index in (1, info.num_layers - 1)])
    ref = _logits(loaded.model, inputs)
    with reduced(loaded.model, plan):
        out = _logits(loaded.model, inputs)
    assert (out - ref).abs().max().item() > 1e-2, "a real reduction must change the output"
    indep = _independent_logits(loaded, plan, inputs, prepared.visual_span)
    assert (out - indep).abs().max().item() <= 1e-5


def _independent_logits(loaded, plan, inputs, span):
    """Eager attention with a per-layer additive mask built by explicit loops, and the FFN's visual
    rows recomputed token by token in float64 with numpy."""
    model = copy.deepcopy(loaded.model)
    model.set_attn_implementation("eager")
    fam = loaded.family
    layers = fam.decoder_layers(model)
    start, length = span
    handles = []
    for lp in plan.layers:
        layer = layers[lp.index]
        handles.append(layer.register_forward_pre_hook(_mask_hook(start, length, lp.hollow_window),
                                                       with_kwargs=True))
        handles.append(fam.ffn(layer).register_forward_hook(
            _ffn_hook(fam, start, length, lp.ffn_indices, lp.ffn_keep, plan.ffn_probes)))
    try:
        return _logits(model, inputs)
    finally:
        for h in handles:
            h.remove()


def _mask_hook(start, length, window):
    def hook(module, args, kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        n = hs.shape[1]
        mask = np.full((n, n), -np.inf, dtype=np.float32)
        for i in range(n):
            for j in range(i + 1):
                both_visual = start <= i < start + length and start <= j < start + length
                if not both_visual or i - j < window:
                    mask[i, j] = 0.0
        kwargs["attention_mask"] = torch.from_numpy(mask)[None, None]
        return args, kwargs

    return hook


def _ffn_hook(fam, start, length, static_indices, keep, probes):
    def hook(module, args, output):
        x = args[0].double().numpy()
        gate, up, down = (lin.weight.double().numpy() for lin in fam.ffn_linears(module))
        out = output.clone()
        for b in range(x.shape[0]):
            indices = static_indices
            if indices is None:  # dynamic: probes every ceil(Nv/M)-th visual token, stable top-K
                stride = math.ceil(length / probes) if length > probes else 1
                hs = []
                for t in range(start, start + length, stride):
                    g = gate @ x[b, t]
                    hs.append(np.abs(g / (1 + np.exp(-g)) * (up @ x[b, t])))
                order = np.argsort(-np.mean(hs, axis=0), kind="stable")[:keep]
                indices = sorted(order.tolist())
            for t in range(start, start + length):
                g = gate[list(indices)] @ x[b, t]
                h = g / (1 + np.exp(-g)) * (up[list(indices)] @ x[b, t])
                out[b, t] = torch.from_numpy(down[:, list(indices)] @ h).float()
        return out

    return hook


# ---- the attention pattern and the FFN selection on their own ----------------------------------
def _loop_attention(q, k, v, span, window, scale):
    """Per-query loop over the explicitly enumerated allowed keys, float64."""
    q, k, v = (t.double().numpy() for t in (q, k, v))
    b, hq, s, d = q.shape
    t = k.shape[2]
    groups = hq // k.shape[1]
    start, length = span
    out = np.zeros_like(q)
    for bi in range(b):
        for h in range(hq):
            for i in range(s):
                qi = t - s + i
                keys = [j for j in range(qi + 1)
                        if not (start <= qi < start + length and start <= j < start + length and qi - j >= window)]
                sc = np.array([q[bi, h, i] @ k[bi, h // groups, j] for j in keys]) * scale
                p = np.exp(sc - sc.max())
                p /= p.sum()
                out[bi, h, i] = sum(pj * v[bi, h // groups, j] for pj, j in zip(p, keys))
    return out


@pytest.mark.parametrize(
    "s,t,span,window",
    [(12, 12, (2, 8), 3), (12, 12, (0, 12), 1), (5, 15, (10, 4), 2), (1, 15, (2, 9), 4), (9, 9, (3, 6), 100)],
)
def test_hollow_attention_matches_per_query_loop(s, t, span, window):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, s, 8, generator=g)
    k = torch.randn(2, 2, t, 8, generator=g)
    v = torch.randn(2, 2, t, 8, generator=g)
    out = hollow_attention(q, k, v, span, window, 0.35)
    np.testing.assert_allclose(out.numpy(), _loop_attention(q, k, v, span, window, 0.35), atol=1e-5)


def test_hollow_allowed_counts_window_keys():
    allowed = hollow_allowed(10, 10, (2, 6), 3)
    for i in range(2, 8):
        assert int(allowed[i, 2:8].sum()) == min(i - 2 + 1, 3)  # W keys counting itself
        assert bool(allowed[i, :2].all())  # the text before the image
    assert bool(allowed[9, :10].all())  # text after sees everything


def test_probe_positions_and_ties():
    assert probe_positions(10, 64).tolist() == list(range(10))
    assert probe_positions(130, 64).tolist() == list(range(0, 130, math.ceil(130 / 64)))
    scores = torch.tensor([1.0, 3.0, 3.0, 0.5, 3.0])
    assert top_k_lower_index_first(scores, 2).tolist() == [1, 2]
