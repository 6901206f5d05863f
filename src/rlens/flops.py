"""Prefill FLOPs accounting (DESIGN §3.4), exact and in FastV's convention.

Token layout: ``text_before`` text tokens, ``visual`` visual tokens, ``text_after`` text tokens
(n = total). Per layer, with hidden d, query width d_q, KV width d_kv, FFN width m:

- QKV+O projections: ``2 n d (2 d_q + 2 d_kv)``
- attention: ``4 d_q * (attended (query, key) pairs)`` (QK^T and PV, multiply-add = 2 FLOPs)
- SwiGLU FFN: ``6 d m n_text + 6 d K N_v``; dynamic mode adds the probes' full gate/up
  ``4 d m M`` (M probe tokens) and their scoring.

FastV convention (Chen et al. 2024, MACs of a non-gated, non-causal layer): ``4 n d^2 + 2 n^2 d
+ 2 n d m``; a reduced layer counts its attended-pair fraction on the ``2 n^2 d`` term and
``K/m`` on the FFN term of its visual tokens.

Token pruning (FastV, VTW; ``plan.token_pruning``): layers from ``layer`` on count only the kept
visual tokens (n and N_v shrink; the hollow window then counts kept tokens); FastV's score
layer adds its extra last-query row ``2 d_q n`` (QK^T of one row) to the exact count. The FastV
convention uses each layer's own n, as FastV's ``K f(n) + (L - K) f(n_hat)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from rlens.plan import LayerPlan, Plan, TokenPruning


@dataclass(frozen=True)
class TokenLayout:
    visual: int
    text_after: int
    text_before: int = 0

    @property
    def total(self) -> int:
        return self.text_before + self.visual + self.text_after

    @property
    def text(self) -> int:
        return self.text_before + self.text_after


@dataclass(frozen=True)
class Sizes:
    hidden: int
    q_width: int
    kv_width: int
    ffn: int
    num_layers: int

    @classmethod
    def from_family_sizes(cls, s: dict[str, int]) -> Sizes:
        return cls(hidden=s["hidden_size"], q_width=s["num_heads"] * s["head_dim"],
                   kv_width=s["num_kv_heads"] * s["head_dim"], ffn=s["intermediate_size"],
                   num_layers=s["num_layers"])


def causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def hollow_pairs(t: TokenLayout, window: int | None) -> int:
    """Attended (query, key) pairs of one layer; ``window=None`` is ordinary causal attention."""
    if window is None or window >= t.visual:
        return causal_pairs(t.total)
    before = causal_pairs(t.text_before)
    w = window
    # visual query number v (0-based) sees text_before + min(v + 1, W) keys
    ramp = causal_pairs(w)  # v < W: v + 1 visual keys
    visual = t.visual * t.text_before + ramp + (t.visual - w) * w
    after = t.text_after * (t.text_before + t.visual) + causal_pairs(t.text_after)
    return before + visual + after


@dataclass(frozen=True)
class LayerFlops:
    index: int
    projections: float
    attention: float
    ffn: float
    fastv: float

    @property
    def total(self) -> float:
        return self.projections + self.attention + self.ffn


def layer_flops(sz: Sizes, t: TokenLayout, lp: LayerPlan | None, ffn_mode: str = "static",
                probes: int = 64, index: int = 0) -> LayerFlops:
    n, d = t.total, sz.hidden
    window = lp.hollow_window if lp is not None else None
    keep = lp.ffn_keep if lp is not None and lp.ffn_keep is not None else sz.ffn
    pairs = hollow_pairs(t, window)
    proj = 2.0 * n * d * (2 * sz.q_width + 2 * sz.kv_width)
    attn = 4.0 * sz.q_width * pairs
    ffn = 6.0 * d * sz.ffn * t.text + 6.0 * d * keep * t.visual
    if lp is not None and lp.ffn_keep is not None and ffn_mode == "dynamic" and t.visual:
        m_probes = min(probes, t.visual)
        ffn += 4.0 * d * sz.ffn * m_probes + 2.0 * sz.ffn * m_probes
    frac = pairs / causal_pairs(n) if n else 1.0
    fastv = 4.0 * n * d * d + 2.0 * n * n * d * frac + 2.0 * d * (sz.ffn * t.text + keep * t.visual)
    return LayerFlops(index, proj, attn, ffn, fastv)


@dataclass(frozen=True)
class FlopsReport:
    layers: tuple[LayerFlops, ...]
    full_total: float
    full_fastv: float

    @property
    def total(self) -> float:
        return sum(lf.total for lf in self.layers)

    @property
    def ratio(self) -> float:
        return self.total / self.full_total

    @property
    def ratio_fastv(self) -> float:
        return sum(lf.fastv for lf in self.layers) / self.full_fastv

    def to_json(self) -> dict:
        return {
            "ratio": round(self.ratio, 6),
            "ratio_fastv_convention": round(self.ratio_fastv, 6),
            "total": self.total,
            "full_total": self.full_total,
            "layers": [dict(asdict(lf), total=lf.total) for lf in self.layers],
        }


def layer_layout(t: TokenLayout, pruning: TokenPruning | None, index: int) -> TokenLayout:
    """The tokens layer ``index`` runs on (fewer visual tokens from the pruning layer on)."""
    if pruning is None or index < pruning.layer:
        return t
    return replace(t, visual=pruning.kept(t.visual))


def _pruned_layer_flops(plan: Plan, sz: Sizes, t: TokenLayout, i: int) -> LayerFlops:
    tp = plan.token_pruning
    lf = layer_flops(sz, layer_layout(t, tp, i), plan.layer(i), plan.ffn_mode, plan.ffn_probes, i)
    if tp is not None and tp.score_layer == i and tp.layer < sz.num_layers:
        lf = replace(lf, attention=lf.attention + 2.0 * sz.q_width * t.total)
    return lf


def plan_flops(plan: Plan | None, sz: Sizes, t: TokenLayout) -> FlopsReport:
    """Per-layer and total prefill FLOPs of ``plan`` (``None`` = unreduced) against the full model."""
    if plan is None:
        layers = tuple(layer_flops(sz, t, None, index=i) for i in range(sz.num_layers))
    else:
        layers = tuple(_pruned_layer_flops(plan, sz, t, i) for i in range(sz.num_layers))
    full = [layer_flops(sz, t, None, index=i) for i in range(sz.num_layers)]
    return FlopsReport(layers, sum(f.total for f in full), sum(f.fastv for f in full))


def flops_summary(plan: Plan, sz: Sizes, t: TokenLayout) -> dict:
    """The plan.json ``flops`` block."""
    r = plan_flops(plan, sz, t)
    out = {"visual_tokens": t.visual, "text_tokens": t.text, "text_before": t.text_before,
           "ratio": round(r.ratio, 6), "ratio_fastv_convention": round(r.ratio_fastv, 6)}
    if plan.token_pruning is not None:
        out["visual_tokens_after_pruning"] = plan.token_pruning.kept(t.visual)
    return out
