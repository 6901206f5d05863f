"""Position ids in numpy: 1-D positions, or Qwen2-VL's M-RoPE (rows t, h, w).

M-RoPE (Hugging Face ``get_rope_index`` for one image): text tokens count up on all three rows;
the visual span of an ``t x h x w`` grid (after the spatial merge) gets ``(t_i, h_i, w_i)`` offset
by the position where the span starts; the text after it resumes at ``max + 1``. Decoding then
continues at ``max(prefill positions) + 1`` on all rows.
"""

from __future__ import annotations

import numpy as np


def prefill_positions(seq: int, span: tuple[int, int], grid: tuple[int, int, int] | None,
                      mrope: bool) -> np.ndarray:
    """Position ids of a prefill chunk: [1, seq] int64, or [3, 1, seq] for M-RoPE."""
    if not mrope:
        return np.arange(seq, dtype=np.int64)[None]
    start, length = span
    pos = np.broadcast_to(np.arange(seq, dtype=np.int64), (3, seq)).copy()
    if length:
        t, h, w = grid if grid is not None else (1, *square_grid(length))
        if t * h * w != length:
            raise ValueError(f"visual grid {t}x{h}x{w} does not cover the {length} visual tokens")
        ti, hi, wi = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        pos[:, start:start + length] = start + np.stack([ti.ravel(), hi.ravel(), wi.ravel()])
        after = seq - start - length
        nxt = int(pos[:, :start + length].max()) + 1
        pos[:, start + length:] = np.arange(nxt, nxt + after, dtype=np.int64)
    return pos[:, None, :]


def next_position(positions: np.ndarray) -> int:
    """The first position after a prefill (every row of a decode step uses it)."""
    return int(positions.max()) + 1


def step_positions(position: int, mrope: bool) -> np.ndarray:
    """Position ids of one decode token: [1, 1] or [3, 1, 1]."""
    p = np.full((1, 1), position, dtype=np.int64)
    return np.broadcast_to(p, (3, 1, 1)).copy() if mrope else p


def square_grid(n: int) -> tuple[int, int]:
    """(h, w) with h * w = n and h the largest divisor of n not above sqrt(n) (synthetic inputs)."""
    h = int(np.sqrt(n))
    while n % h:
        h -= 1
    return h, n // h
