"""Hollow Attention (DESIGN §3.1), the reference formulation: an explicit allowed-pair matrix.

A visual query at absolute position i may attend a visual key at j only if ``0 <= i - j < W``;
every other (query, key) pair keeps ordinary causal attention.
"""

from __future__ import annotations

import torch


def hollow_allowed(q_len: int, k_len: int, span: tuple[int, int], window: int | None) -> torch.Tensor:
    """Boolean [q_len, k_len]: True where query attends key.

    Queries are the last ``q_len`` of ``k_len`` positions (absolute query position = past + i).
    ``span`` = (start, length) in absolute positions; ``window=None`` gives plain causal attention.
    """
    past = k_len - q_len
    qpos = torch.arange(q_len).unsqueeze(1) + past
    kpos = torch.arange(k_len).unsqueeze(0)
    allowed = kpos <= qpos
    start, length = span
    if window is None or length == 0:
        return allowed
    end = start + length
    q_vis = (qpos >= start) & (qpos < end)
    k_vis = (kpos >= start) & (kpos < end)
    too_far = (qpos - kpos) >= window
    return allowed & ~(q_vis & k_vis & too_far)


def _merge_mask(allowed: torch.Tensor, attention_mask: torch.Tensor | None, k_len: int) -> torch.Tensor:
    """Combine the [S, T] pattern with the model's own mask ([B, 1, S, T] bool or additive float)."""
    allowed = allowed[None, None]
    if attention_mask is None:
        return allowed
    mask = attention_mask[..., :k_len]
    if mask.dtype == torch.bool:
        return allowed & mask
    return allowed & (mask > torch.finfo(mask.dtype).min / 2)


def hollow_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    span: tuple[int, int],
    window: int | None,
    scaling: float,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, Hq, S, D], k/v [B, Hkv, T, D] (RoPE applied, past included) -> [B, Hq, S, D].

    The pattern is the explicit boolean matrix of :func:`hollow_allowed`; the masked softmax is
    torch's SDPA (the same kernel transformers' default ``sdpa`` attention uses). GQA by
    repeating KV heads.
    """
    s, t = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    allowed = _merge_mask(hollow_allowed(s, t, span, window).to(query.device), attention_mask, t)
    out = torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=allowed, scale=scaling)
    # A row with no allowed key (only with padding masks) comes out NaN: make it zeros.
    return out.nan_to_num(0.0)
