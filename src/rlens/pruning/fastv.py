"""FastV (Chen et al. 2024): layers K.. keep the top ``1 - R`` visual tokens by layer K-1's
last-token attention."""

from __future__ import annotations

import argparse
from typing import Any

from rlens.errors import InputError
from rlens.pruning.base import PruningMethod, register


@register
class FastV(PruningMethod):
    name = "fastv"
    title = "FastV"
    ranks_tokens = True
    metavar = "K,R"
    help = "FastV: layers K.. keep the top (1-R) visual tokens by layer K-1's last-token attention"

    def parse_flag(self, value: str) -> tuple[int, float]:
        try:
            k, r = value.split(",")
            return int(k), float(r)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected K,R (e.g. 2,0.5), got {value!r}") from None

    def check(self, value: Any) -> None:
        k, r = value
        if not isinstance(k, int) or k < 1 or not 0.0 <= r <= 1.0:
            raise InputError(f"--fastv K,R needs a layer K >= 1 and a ratio R in [0, 1], got {k},{r}")

    def fixed(self, value: Any, num_layers: int) -> dict[str, Any]:
        k, r = value
        self._check_layer(k, num_layers)
        return {"layer": k, "ratio": float(r)}

    def describe(self, tp: Any) -> str:
        return f"FastV K={tp.layer} R={tp.ratio:g}"
