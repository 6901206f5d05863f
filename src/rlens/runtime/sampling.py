"""Next-token choice from last-position logits: greedy, or temperature + top-p with a seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rlens.errors import InputError

MAX_TEMPERATURE = 100.0


@dataclass
class Sampler:
    """``temperature == 0`` is greedy (argmax, first index on ties, like Hugging Face)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise InputError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {self.temperature}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise InputError(f"seed must be an integer between 0 and 2**63 - 1, got {self.seed!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        self.rng = np.random.default_rng(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def __call__(self, logits: np.ndarray) -> int:
        """``logits`` [V] (float) -> one token id."""
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.greedy:
            return int(np.argmax(logits))
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            z = (logits - logits.max()) / self.temperature  # <= 0; a tiny temperature gives -inf, not nan
            z[np.isnan(z)] = 0.0  # 0 / subnormal temperature
        p = np.exp(z)
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, self.top_p) + 1)]
        q = p[keep] / p[keep].sum()
        return int(keep[self.rng.choice(len(keep), p=q)])
