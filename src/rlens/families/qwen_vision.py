"""Qwen2-VL / Qwen2.5-VL vision tower as an exportable module, any image grid in one graph.

Hugging Face's vision forward computes the rotary positions and the window partition from
``image_grid_thw`` with Python loops (``.tolist()``), so a traced graph would be fixed to one grid.
Here they are graph *inputs* that the runtime computes in numpy from the grid (this module's numpy
half, torch-free): ``vision_position_ids`` [N, 2] (h, w of each patch, merge-block order), and for
Qwen2.5-VL ``window_index`` [N/m^2] (merge blocks in window order), ``window_reverse`` (its
inverse permutation) and the blocked window layout: every window padded to P patches (P = the
patches of a full window), ``window_gather`` [windows*P] (the window-order patch in each slot; 0 in
a padding slot), ``window_valid`` [windows, P] (real slots) and ``window_scatter`` [N] (the slot of
each window-order patch). Windowed blocks attend within each window only: [windows, heads, P, P]
scores with padding keys masked out, so their cost is linear in the image, not quadratic (HF runs
one attention per window; the result is the same). Full-attention blocks attend over the whole
image (one image = one segment). The module uses the model's own submodules (patch embedding,
rotary frequencies, norms, qkv/proj linears, MLPs, merger); export checks it against
``get_image_features`` at several grids.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def vision_position_ids(grid: tuple[int, int, int], merge: int) -> np.ndarray:
    """(h, w) patch coordinates [t*h*w, 2] int64, in the processor's merge-block order."""
    t, h, w = grid
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    hh = hh.reshape(shape).transpose(0, 2, 1, 3).ravel()
    ww = ww.reshape(shape).transpose(0, 2, 1, 3).ravel()
    return np.tile(np.stack([hh, ww], -1), (t, 1)).astype(np.int64)


def window_partition(grid: tuple[int, int, int], merge: int, window: int, patch: int) -> dict[str, np.ndarray]:
    """Qwen2.5-VL's window order: merge blocks grouped into ``window``-pixel squares, row-major.

    Returns ``window_index`` (merge-block permutation), ``window_reverse`` (its inverse) and the
    blocked layout ``window_gather`` / ``window_valid`` / ``window_scatter`` (module docstring).
    """
    t, h, w = grid
    lh, lw = h // merge, w // merge
    side = window // merge // patch  # merge blocks per window side
    index = np.arange(t * lh * lw).reshape(t, lh, lw)
    ph, pw = -lh % side, -lw % side
    padded = np.pad(index, ((0, 0), (0, ph), (0, pw)), constant_values=-1)
    nh, nw = (lh + ph) // side, (lw + pw) // side
    padded = padded.reshape(t, nh, side, nw, side).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, side * side)
    valid = padded >= 0
    order = padded[valid]
    unit = merge * merge
    rank = np.cumsum(valid.ravel()).reshape(valid.shape) - 1  # window-order merge block of a valid cell
    gather = (np.where(valid, rank, 0)[:, :, None] * unit + np.arange(unit)) * valid[:, :, None]
    slots = np.repeat(valid, unit, axis=1)  # [windows, P]
    return {"window_index": order.astype(np.int64), "window_reverse": np.argsort(order).astype(np.int64),
            "window_gather": gather.reshape(-1).astype(np.int64), "window_valid": slots,
            "window_scatter": np.flatnonzero(slots.ravel()).astype(np.int64)}


MAX_ASPECT = 200  # smart_resize refuses images more elongated than this (rlens.imageproc.qwen2_vl)


def max_windows(params: dict[str, Any], merged: int) -> int:
    """Most windows an image of at most ``merged`` merge blocks can have: an a x b grid of blocks
    (a*b <= merged, a/b <= 200) has ceil(a/s)*ceil(b/s) <= merged/s^2 + (a+b)/s + 1 windows of side
    s, and a + b is largest at the extreme aspect ratio; never more than one window per block."""
    import math

    side = int(params["window_size"]) // int(params["merge_size"]) // int(params["patch_size"])
    longest = math.sqrt(merged * MAX_ASPECT) + math.sqrt(merged / MAX_ASPECT)
    return max(1, min(merged, int(merged / side ** 2 + longest / side + 2)))


def window_slots(params: dict[str, Any]) -> int:
    """P: the patches of one full window."""
    merge = int(params["merge_size"])
    side = int(params["window_size"]) // merge // int(params["patch_size"])
    return side * side * merge * merge


def vision_feeds(grid: tuple[int, int, int], params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The grid-dependent vision graph inputs (everything but ``pixel_values``)."""
    merge = int(params["merge_size"])
    feeds = {"vision_position_ids": vision_position_ids(grid, merge)}
    if params.get("window_size"):
        feeds.update(window_partition(grid, merge, int(params["window_size"]), int(params["patch_size"])))
    return feeds


def export_module(model: Any) -> Any:
    """A torch module ``(pixel_values, vision_position_ids[, window_*]) -> features [N_v, H]``."""
    import torch
    import torch.nn.functional as F

    visual = model.model.visual
    vc = visual.config
    windowed = bool(getattr(vc, "fullatt_block_indexes", None))
    full_blocks = set(getattr(vc, "fullatt_block_indexes", None) or ())
    unit = vc.spatial_merge_size ** 2
    slots = window_slots({"merge_size": vc.spatial_merge_size, "patch_size": vc.patch_size,
                          "window_size": vc.window_size}) if windowed else 0

    def rotate_half(x: Any) -> Any:
        a, b = x.chunk(2, dim=-1)
        return torch.cat((-b, a), dim=-1)

    def attention(attn: Any, x: Any, cos: Any, sin: Any, window: Any) -> Any:
        """Full attention over the image, or (``window`` = (gather, valid, scatter)) within windows."""
        n = x.shape[0]
        q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        c, s = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
        q = (q.float() * c + rotate_half(q.float()) * s).to(v.dtype)
        k = (k.float() * c + rotate_half(k.float()) * s).to(v.dtype)
        if window is None:
            q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
            return attn.proj(out[0].transpose(0, 1).reshape(n, -1))
        gather, valid, scatter = window
        q, k, v = (t[gather].reshape(-1, slots, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], scale=attn.scaling)
        out = out.transpose(1, 2).reshape(-1, x.shape[1])[scatter]
        return attn.proj(out)

    def permute(x: Any, index: Any) -> Any:
        return x.reshape(-1, unit, x.shape[-1])[index].reshape(-1, x.shape[-1])

    class QwenVision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = visual

        def forward(self, pixel_values: Any, vision_position_ids: Any, window_index: Any = None,
                    window_reverse: Any = None, window_gather: Any = None, window_valid: Any = None,
                    window_scatter: Any = None) -> Any:
            h = self.visual.patch_embed(pixel_values.to(self.visual.patch_embed.proj.weight.dtype))
            cos, sin = self.visual.rotary_pos_emb(h, vision_position_ids)
            window = None
            if windowed:
                h, cos, sin = (permute(x, window_index) for x in (h, cos, sin))
                window = (window_gather, window_valid, window_scatter)
            for i, blk in enumerate(self.visual.blocks):
                h = h + attention(blk.attn, blk.norm1(h), cos, sin, None if i in full_blocks else window)
                h = h + blk.mlp(blk.norm2(h))
            out = self.visual.merger(h)
            return out[window_reverse] if windowed else out

    return QwenVision().eval()


def input_names(windowed: bool) -> list[str]:
    names = ["pixel_values", "vision_position_ids"]
    return names + (["window_index", "window_reverse", "window_gather", "window_valid", "window_scatter"]
                    if windowed else [])
