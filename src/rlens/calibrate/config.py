"""The typed configuration of the calibrate stage (DESIGN §3.3): one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlens.errors import InputError
from rlens.pruning import PRUNING_METHODS

RANKINGS = ("greedy", "fast", "stats")
FFN_MODES = ("static", "dynamic")
DEFAULT_PROPORTION = 0.5


@dataclass(frozen=True)
class CalibrationConfig:
    """Everything ``rlens calibrate`` takes besides the model and the data.

    ``budget`` (target prefill FLOPs ratio) and ``proportion`` (share of layers reduced) are
    exclusive; with neither, half of the layers are reduced (the paper's operating point).
    """

    ranking: str = "greedy"
    ffn_mode: str = "static"
    window: int = 256
    ffn_keep: float = 0.2
    probes: int = 64
    budget: float | None = None
    proportion: float | None = None
    #: rank hollow attention and the FFN reduction separately (two orders) instead of together.
    separate: bool = False
    max_samples: int | None = None
    seed: int = 0
    #: token counts for the FLOPs ratio; default: the calibration set's means.
    visual_tokens: int | None = None
    text_tokens: int | None = None
    #: samples of equal shape run together in batches of at most this many.
    batch_size: int = 8
    #: where the per-layer hidden-state cache lives ("cpu" to spare accelerator memory);
    #: default: where the decoder runs.
    cache_device: str | None = None
    progress: bool = True
    #: greedy only: stop after this many rounds (the rest of the order follows fast's); "plan":
    #: as many as the plan reduces (same plan as the full greedy, cheaper); None: all L rounds.
    greedy_rounds: int | str | None = None
    #: greedy only: memory (GiB, on ``cache_device``) for candidates' checkpoints, which let a
    #: candidate resume after the layers its last run already computed; 0: none (slower, same result).
    greedy_cache_gib: float = 4.0
    #: token pruning (docs/token_pruning.md), one field per method of rlens.pruning (named as the
    #: method; the value its flag parses to): FastV (first pruned layer K, dropped share R) ...
    fastv: tuple[int, float] | None = None
    #: ... or VTW: "auto" (first layer >= vtw_min_layer with mean KL <= vtw_eta) or a layer K.
    vtw: str | int | None = None
    vtw_eta: float = 0.003
    vtw_min_layer: int = 5

    def __post_init__(self) -> None:
        if self.ranking not in RANKINGS:
            raise InputError(f"--ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if self.ffn_mode not in FFN_MODES:
            raise InputError(f"--ffn-mode must be one of {', '.join(FFN_MODES)}, got {self.ffn_mode!r}")
        if self.budget is not None and self.proportion is not None:
            raise InputError("give either --budget or --proportion, not both")
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise InputError(f"--budget is a FLOPs ratio in (0, 1], got {self.budget}")
        if self.proportion is not None and not 0.0 <= self.proportion <= 1.0:
            raise InputError(f"--proportion must be in [0, 1], got {self.proportion}")
        if not 0.0 < self.ffn_keep <= 1.0:
            raise InputError(f"--ffn-keep must be in (0, 1], got {self.ffn_keep}")
        for name in ("window", "probes", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_samples is not None and self.max_samples < 1:
            raise InputError(f"--max-samples must be at least 1, got {self.max_samples}")
        if self.greedy_rounds is not None and self.greedy_rounds != "plan" and (
                not isinstance(self.greedy_rounds, int) or self.greedy_rounds < 1):
            raise InputError(
                f"--greedy-rounds must be a positive integer or 'plan', got {self.greedy_rounds!r}")
        if not self.greedy_cache_gib >= 0.0:
            raise InputError(f"--greedy-cache must be >= 0 GiB, got {self.greedy_cache_gib}")
        self._check_pruning()
        for name in ("visual_tokens", "text_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {value}")

    def _check_pruning(self) -> None:
        given = self.token_pruning_flags
        if len(given) > 1:
            raise InputError(f"give one token pruning method, not both {' and '.join('--' + m for m in given)}")
        for name, value in given.items():
            PRUNING_METHODS[name].check(value)
        if not self.vtw_eta >= 0.0:
            raise InputError(f"--vtw-eta must be >= 0, got {self.vtw_eta}")
        if self.vtw_min_layer < 0:
            raise InputError(f"--vtw-min-layer must be >= 0, got {self.vtw_min_layer}")

    @property
    def token_pruning_flags(self) -> dict[str, Any]:
        """Pruning method name -> its flag's value, for the methods given (at most one)."""
        return {m: getattr(self, m) for m in PRUNING_METHODS if getattr(self, m, None) is not None}

    @property
    def kinds(self) -> tuple[str, ...]:
        """The rankings to run: one joint ranking, or one per reduction."""
        return ("attention", "ffn") if self.separate else ("both",)
