"""Apply a plan to a model in scope: ``with reduced(model, plan) as r: model(...)``.

Nothing is copied and nothing outlives the ``with`` block: reduced layers get a :class:`ProbeFFN`
wrapper around their own FFN (same weights) and an attention config that routes to
:func:`hollow_attention`; the attention function is registered with transformers only inside
the block. On exit every module, config and registration is restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from rlens import hf_compat
from rlens.errors import InputError
from rlens.families import family_for_config
from rlens.families.base import NO_SPAN, Family, VisualSpan
from rlens.plan import Plan
from rlens.reference.ffn import ProbeFFN
from rlens.reference.hollow import hollow_attention
from rlens.reference.tokens import SCORE_ATTN_NAME, PruneState, prune_pre_hook, score_attention_forward

ATTN_NAME = "rlens_hollow_reference"


class SpanState:
    """The visual span of the chunk being run. Set explicitly with :attr:`visual_span`, or
    found from ``input_ids`` on each top-level forward (prefill: the image span; decode: none)."""

    def __init__(self, family: type[Family], config: Any) -> None:
        self._family = family
        self._config = config
        self.visual_span: tuple[int, int] | None = None
        self._auto: VisualSpan = NO_SPAN
        self.pruning: PruneState | None = None  # set by reduced() when the plan prunes tokens

    def layer_span(self, index: int) -> tuple[int, int]:
        """The visual span as layer ``index`` sees it (after token pruning: the kept tokens)."""
        if self.pruning is not None and self.pruning.applies(index):
            return self.pruning.span
        return self.chunk_span()

    def chunk_span(self) -> tuple[int, int]:
        if self.visual_span is not None:
            return tuple(self.visual_span)  # type: ignore[return-value]
        return self._auto.as_tuple()

    def pre_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.visual_span is not None:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise InputError("forward without input_ids: set visual_span on the reduced() handle")
        self._auto = self._family.find_visual_span(ids, self._config)


def _hollow_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                    scaling: float | None = None, dropout: float = 0.0, **_: Any) -> tuple[Any, None]:
    window, state, index = module._rlens_hollow
    start, length = state.layer_span(index)
    past = key.shape[2] - query.shape[2]
    scale = hf_compat.attention_scaling(module) if scaling is None else scaling
    out = hollow_attention(query, key, value, (start + past, length), window, scale, attention_mask)
    return out.transpose(1, 2).contiguous(), None


def _swap_attr(stack: ExitStack, obj: Any, name: str, value: Any) -> None:
    old = getattr(obj, name)
    setattr(obj, name, value)
    stack.callback(setattr, obj, name, old)


def _hollow_layer(stack: ExitStack, attn: Any, window: int, state: SpanState, index: int) -> None:
    _swap_attr(stack, attn, "config", hf_compat.with_attn_implementation(attn.config, ATTN_NAME))
    attn._rlens_hollow = (window, state, index)
    stack.callback(delattr, attn, "_rlens_hollow")


def _score_layer(stack: ExitStack, attn: Any, prune: PruneState) -> None:
    """FastV's score layer: its attention function also records the last-query attention."""
    inner = hf_compat.attn_implementation(attn.config)
    _swap_attr(stack, attn, "config", hf_compat.with_attn_implementation(attn.config, SCORE_ATTN_NAME))
    attn._rlens_fastv = (prune, inner)
    stack.callback(delattr, attn, "_rlens_fastv")


def _token_pruning(stack: ExitStack, plan: Plan, family: type[Family], layers: Any, state: SpanState) -> None:
    tp = plan.token_pruning
    if tp is None or tp.layer >= len(layers):
        return
    state.pruning = prune = PruneState(tp)
    if tp.score_layer is not None:
        _score_layer(stack, family.attention(layers[tp.score_layer]), prune)
    for i in range(tp.layer, len(layers)):
        handle = layers[i].register_forward_pre_hook(prune_pre_hook(i, prune, state.chunk_span), with_kwargs=True)
        stack.callback(handle.remove)


@contextmanager
def reduced(model: Any, plan: Plan, family: type[Family] | None = None) -> Iterator[SpanState]:
    """Run ``model`` with ``plan``'s reductions inside the block. Yields the :class:`SpanState`."""
    family = family or family_for_config(model.config)
    state = SpanState(family, model.config)
    layers = family.decoder_layers(model)
    with ExitStack() as stack:
        if any(lp.hollow_window is not None for lp in plan.layers) or plan.token_pruning is not None:
            stack.enter_context(hf_compat.attention_functions(
                {ATTN_NAME: _hollow_forward, SCORE_ATTN_NAME: score_attention_forward}))
        for lp in plan.layers:
            layer = layers[lp.index]
            if lp.hollow_window is not None:
                _hollow_layer(stack, family.attention(layer), lp.hollow_window, state, lp.index)
            if lp.ffn_keep is not None:
                mlp = family.ffn(layer)
                indices = lp.ffn_indices if plan.ffn_mode == "static" else None
                wrapper = ProbeFFN(mlp, family.ffn_linears(mlp), lp.ffn_keep, indices,
                                   plan.ffn_probes, _layer_span(state, lp.index))
                _swap_attr(stack, layer, family.mlp_attr, wrapper)
        _token_pruning(stack, plan, family, layers, state)  # after hollow: the score layer wraps it
        handle = model.register_forward_pre_hook(state.pre_forward, with_kwargs=True)
        stack.callback(handle.remove)
        yield state


def _layer_span(state: SpanState, index: int) -> Any:
    return lambda: state.layer_span(index)
