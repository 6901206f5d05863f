"""Visual-token pruning (FastV, VTW) in the reference: decoder layers really run on fewer rows.

``TokenPruning.layer`` = K is the first layer that sees the reduced token set. A forward
pre-hook on layer K picks the kept rows of the chunk (text rows always; for FastV the top visual
rows by layer K-1's head-averaged last-query attention, ties to the lower index, kept in their
original order; for VTW none) and gathers the hidden states. Pre-hooks on layers K.. gather that
layer's keyword arguments the same way: rotary cos/sin (so kept tokens keep their original
position ids, M-RoPE included), ``position_ids`` and the 4-D attention mask (query rows, and key
columns: the layer's own, shorter past, then the kept rows of the chunk). Each layer writes its
K/V to the cache as usual, so the caches of layers K.. hold only kept tokens, and decode steps
attend to those shorter caches. Nothing else of the model changes.
"""

from __future__ import annotations

from typing import Any

import torch

from rlens import hf_compat
from rlens.plan import TokenPruning
from rlens.reference.ffn import top_k_lower_index_first

SCORE_ATTN_NAME = "rlens_fastv_score_reference"


class PruneState:
    """Per chunk: the FastV scores of the score layer, then the kept rows and the pruned span."""

    def __init__(self, pruning: TokenPruning) -> None:
        self.pruning = pruning
        self.first = pruning.layer
        self.scores: torch.Tensor | None = None  # [B, P+S] head-averaged last-query attention
        self.rows: torch.Tensor | None = None  # [B, S'] kept chunk rows, ascending
        self.span: tuple[int, int] = (0, 0)  # visual span of the kept rows
        self.dropped = 0

    def applies(self, layer: int) -> bool:
        return layer >= self.first


def kept_rows(span: tuple[int, int], seq: int, batch: int, pruning: TokenPruning,
              visual_scores: torch.Tensor | None) -> torch.Tensor:
    """[B, S'] chunk rows that layers K.. see. ``visual_scores`` [B, N_v] (FastV only)."""
    start, length = span
    if length == 0:
        return torch.arange(seq).expand(batch, -1)
    keep = pruning.kept(length)
    if keep == 0:
        idx = torch.zeros(batch, 0, dtype=torch.long)
    else:
        assert visual_scores is not None, "FastV needs the score layer's attention"
        idx = top_k_lower_index_first(visual_scores.float().cpu(), keep)
    before = torch.arange(start).expand(batch, -1)
    after = torch.arange(start + length, seq).expand(batch, -1)
    return torch.cat([before, start + idx, after], dim=1)


def _gather_seq(t: torch.Tensor, rows: torch.Tensor, batch_dim: int) -> torch.Tensor:
    """Gather the last-but-``feature`` sequence axis: t [..., B|1, S, (D)] by rows [B, S']."""
    seq_dim = batch_dim + 1
    shape = list(t.shape)
    shape[batch_dim] = rows.shape[0]
    t = t.expand(shape)
    idx = rows.to(t.device)
    view = [1] * t.dim()
    view[batch_dim], view[seq_dim] = idx.shape
    idx = idx.view(view)
    target = list(t.shape)
    target[seq_dim] = idx.shape[seq_dim]
    return t.gather(seq_dim, idx.expand(target))


def prune_mask(mask: torch.Tensor | None, rows: torch.Tensor, past_own: int) -> torch.Tensor | None:
    """4-D mask [B|1, H|1, S, P+S] -> [B, H|1, S', P'+S']: query rows ``rows``; key columns the
    last ``past_own`` past columns (the pruned cache; no padding may precede the dropped visual
    tokens) and the kept chunk rows."""
    if mask is None or mask.dim() != 4:
        return mask
    b, s = rows.shape[0], mask.shape[2]
    full_past = mask.shape[3] - s
    rows = rows.to(mask.device)
    cols = torch.cat([torch.arange(full_past - past_own, full_past, device=mask.device).expand(b, -1),
                      full_past + rows], dim=1)
    m = mask.expand(b, mask.shape[1], s, mask.shape[3])
    m = m.gather(2, rows[:, None, :, None].expand(b, m.shape[1], rows.shape[1], m.shape[3]))
    return m.gather(3, cols[:, None, None, :].expand(b, m.shape[1], rows.shape[1], cols.shape[1]))


def prune_layer_kwargs(kwargs: dict[str, Any], rows: torch.Tensor, past_own: int) -> dict[str, Any]:
    """A decoder layer's keyword arguments for the kept rows only."""
    kw = dict(kwargs)
    pe = kw.get("position_embeddings")
    if pe is not None:
        kw["position_embeddings"] = tuple(_gather_seq(t, rows, t.dim() - 3) for t in pe)
    pid = kw.get("position_ids")
    if isinstance(pid, torch.Tensor):
        kw["position_ids"] = _gather_seq(pid, rows, pid.dim() - 2)
    kw["attention_mask"] = prune_mask(kw.get("attention_mask"), rows, past_own)
    if isinstance(kw.get("cache_position"), torch.Tensor):
        kw["cache_position"] = torch.arange(past_own, past_own + rows.shape[1], device=kw["cache_position"].device)
    return kw


def _own_past(layer: Any, kwargs: dict[str, Any], index: int) -> int:
    cache = hf_compat.layer_cache(layer, kwargs)
    return 0 if cache is None else hf_compat.cache_seq_length(cache, index)


def prune_pre_hook(index: int, state: PruneState, chunk_span: Any) -> Any:
    """Forward pre-hook for layer ``index`` >= K (with kwargs): drop the pruned rows."""

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        past_own = _own_past(module, kwargs, index)
        if index == state.first:
            _choose_rows(state, chunk_span(), hidden.shape[1], hidden.shape[0], kwargs)
            hidden = _gather_seq(hidden, state.rows, 0)
        kwargs = prune_layer_kwargs(kwargs, state.rows, past_own)
        if args:
            return (hidden, *args[1:]), kwargs
        kwargs["hidden_states"] = hidden
        return args, kwargs

    return hook


def _choose_rows(state: PruneState, span: tuple[int, int], seq: int, batch: int, kwargs: dict) -> None:
    start, length = span
    scores = None
    if state.pruning.score_layer is not None and length and state.pruning.kept(length):
        assert state.scores is not None, "the FastV score layer did not run in this forward"
        past = state.scores.shape[1] - seq  # the score layer is unpruned: its keys are P + S
        scores = state.scores[:, past + start: past + start + length]
    state.rows = kept_rows(span, seq, batch, state.pruning, scores)
    kept = state.pruning.kept(length) if length else 0
    state.span = (start, kept) if length else (0, 0)
    state.dropped = length - kept if length else 0
    state.scores = None


def last_query_scores(query: torch.Tensor, key: torch.Tensor, scaling: float,
                      attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Head-averaged softmax of the last query row over all keys: [B, T] (float32)."""
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).float()
    s = (query[:, :, -1:].float() @ k.transpose(-1, -2)) * scaling  # [B, Hq, 1, T]
    if attention_mask is not None:
        last = attention_mask[:, :, -1:, : key.shape[2]]
        if last.dtype == torch.bool:
            s = s.masked_fill(~last, torch.finfo(s.dtype).min)
        else:
            s = s + last.float()
    return torch.softmax(s, dim=-1).mean(dim=1)[:, 0]


def score_attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                            scaling: float | None = None, **kw: Any) -> Any:
    """The score layer's attention: the layer's own attention function, plus the FastV score."""
    state, inner = module._rlens_fastv
    scale = hf_compat.attention_scaling(module) if scaling is None else scaling
    state.scores = last_query_scores(query, key, scale, attention_mask)
    fn = hf_compat.attention_function(inner)
    return fn(module, query, key, value, attention_mask, scaling=scaling, **kw)


def map_positions(positions: torch.Tensor, span: tuple[int, int], dropped: int) -> torch.Tensor:
    """Chunk positions after the visual span -> their rows after pruning."""
    end = span[0] + span[1]
    return torch.where(positions >= end, positions - dropped, positions)
