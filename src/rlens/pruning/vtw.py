"""VTW (visual tokens withdrawal, Lin et al. 2024): layers K.. see no visual token; K given, or
chosen at calibration as the first layer >= ``vtw_min_layer`` whose mean KL(P_withdrawn || P_full)
of the last prompt token is <= ``vtw_eta``."""

from __future__ import annotations

from typing import Any

from rlens.errors import InputError
from rlens.pruning.base import PruningMethod, layer_or_auto, register


@register
class VTW(PruningMethod):
    name = "vtw"
    title = "VTW"
    fixed_ratio = 1.0
    metavar = "auto|K"
    help = "VTW: layers K.. see no visual token; auto: first layer with mean KL <= --vtw-eta"

    def parse_flag(self, value: str) -> str | int:
        return layer_or_auto(value)

    def check(self, value: Any) -> None:
        if value != "auto" and (not isinstance(value, int) or value < 0):
            raise InputError(f"--vtw must be 'auto' or a layer index >= 0, got {value!r}")

    def fixed(self, value: Any, num_layers: int) -> dict[str, Any] | None:
        if value == "auto":
            return None
        self._check_layer(value, num_layers)
        return {"layer": value, "chosen_by": "manual"}

    def choose(self, driver: Any, config: Any) -> dict[str, Any]:
        """VTW's rule: the first layer K >= ``vtw_min_layer`` whose mean ``KL(P_withdrawn || P_full)``
        of the last prompt token is <= ``vtw_eta``; ``K = L`` (nothing withdrawn) when none is."""
        L = driver.num_layers
        for k in range(min(config.vtw_min_layer, L), L):
            kl = driver.withdrawal_divergence(k)
            if kl <= config.vtw_eta:
                return {"layer": k, "eta": config.vtw_eta, "chosen_by": "auto", "divergence": round(kl, 8)}
        return {"layer": L, "eta": config.vtw_eta, "chosen_by": "auto"}

    def describe(self, tp: Any) -> str:
        return f"VTW from layer {tp.layer}"
