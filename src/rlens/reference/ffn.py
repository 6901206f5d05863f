"""Probe-Activated Dynamic FFN (DESIGN §3.2), the reference formulation.

Text tokens always take the full FFN. Visual tokens take
``W_down[:, S] (silu(W_gate[S] x) * (W_up[S] x))`` with S the kept hidden units: fixed at
calibration (static) or the top-K of probe scores of the current input (dynamic).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def probe_positions(n_visual: int, probes: int) -> torch.Tensor:
    """Every ``ceil(N_v / M)``-th visual token from the first (all of them if ``N_v <= M``)."""
    if n_visual <= probes:
        return torch.arange(n_visual)
    return torch.arange(0, n_visual, math.ceil(n_visual / probes))


def top_k_lower_index_first(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores along the last dim; ties go to the lower index.
    Returned in ascending index order."""
    order = torch.sort(-scores, dim=-1, stable=True).indices[..., :k]
    return torch.sort(order, dim=-1).values


def probe_scores(h: torch.Tensor) -> torch.Tensor:
    """``s_k = mean_p |h_pk|`` over probe rows of the FFN hidden activations h [..., P, m]."""
    return h.abs().float().mean(dim=-2)


class ProbeFFN(nn.Module):
    """Wraps a SwiGLU FFN module (weights shared, nothing copied) with the visual-token path.

    ``span`` is a callable giving the (start, length) of the visual tokens within the current
    chunk, so the same wrapper serves prefill (span set) and decode (no visual tokens).
    """

    def __init__(self, mlp: nn.Module, linears: tuple[nn.Module, nn.Module, nn.Module], keep: int,
                 indices: tuple[int, ...] | None, probes: int, span) -> None:
        super().__init__()
        self.inner = mlp
        self.gate, self.up, self.down = linears
        self.keep = keep
        self.probes = probes
        self.span = span
        self.register_buffer(
            "static_indices",
            None if indices is None else torch.tensor(sorted(indices), dtype=torch.long),
            persistent=False,
        )

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.gate(x)) * self.up(x)

    def select(self, h_visual: torch.Tensor) -> torch.Tensor:
        """Kept units per batch row: [B, K]."""
        b = h_visual.shape[0]
        if self.static_indices is not None:
            return self.static_indices.to(h_visual.device).expand(b, -1)
        probes = probe_positions(h_visual.shape[1], self.probes).to(h_visual.device)
        return top_k_lower_index_first(probe_scores(h_visual[:, probes]), self.keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start, length = self.span()
        if length == 0:
            return self.inner(x)
        xv = x[:, start:start + length]
        h = self.hidden(xv)
        kept = self.select(h)  # [B, K]
        # Zero the units outside S and call the down projection module itself (so accelerate's
        # offload hooks, which act on module calls, see every weight access). The dropped
        # units contribute exact zeros: the result is W_down[:, S] h[S] (+ bias).
        mask = torch.zeros_like(h).scatter_(-1, kept[:, None, :].expand(-1, h.shape[1], -1), 1.0)
        visual = self.down(h * mask)
        if length == x.shape[1]:
            return visual
        # The FFN is row-wise: the text rows alone through the full FFN (the visual rows' full
        # FFN would be thrown away).
        text = self.inner(torch.cat([x[:, :start], x[:, start + length:]], dim=1))
        return torch.cat([text[:, :start], visual.to(text.dtype), text[:, start:]], dim=1)
