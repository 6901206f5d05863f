"""Layer rankings (DESIGN §3.3): ``greedy`` (the paper's), ``fast`` (each layer alone), ``stats``.

A ranking orders the decoder layers from most to least redundant. ``make_plan(layers)`` gives
the candidate plan reducing exactly ``layers`` (with the reductions of the ranked kind).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from rlens.calibrate.driver import Driver
from rlens.plan import Plan

MakePlan = Callable[[Sequence[int]], Plan]


@dataclass(frozen=True)
class RankResult:
    """One ranking. ``steps[i]``: greedy — divergence with ``order[:i+1]`` reduced; fast — the
    divergence of ``order[i]`` reduced alone; stats — the score of ``order[i]``.
    ``sensitivity[l]``: layer l reduced alone (divergence; stats: its score)."""

    kind: str  # "both", "attention" or "ffn"
    method: str
    order: tuple[int, ...]
    steps: tuple[float, ...]
    sensitivity: tuple[float, ...]
    layer_evals: int
    seconds: float

    @property
    def cumulative(self) -> bool:
        return self.method == "greedy"


def rank_greedy(driver: Driver, make_plan: MakePlan, kind: str = "both",
                rounds: int | None = None) -> RankResult:
    """Start from no reduced layer; each round add the layer whose reduction (on top of the
    committed ones) gives the smallest divergence (ties: lower index). A candidate ``l`` runs
    only layers ``l ..`` from the cache of the committed set; the winner is then committed.

    ``rounds`` < L stops early: the order's first ``rounds`` layers are greedy's (so is any plan
    reducing at most that many), the rest follow in fast order (round one's divergences) and
    ``steps`` has ``rounds`` entries."""
    t0, evals0 = time.perf_counter(), driver.layer_evals
    driver.ensure_full_cache()
    L = driver.num_layers
    rounds = L if rounds is None else max(1, min(rounds, L))
    committed: list[int] = []
    steps: list[float] = []
    alone = [math.nan] * L
    with tqdm(total=sum(L - r for r in range(rounds)), desc=f"calibrate: greedy ranking ({kind})",
              unit="eval", disable=not driver.progress) as bar:
        for rnd in range(rounds):
            best: tuple[float, int] | None = None
            for layer in (i for i in range(L) if i not in committed):
                d = driver.divergence(make_plan([*committed, layer]), start=layer)
                if rnd == 0:
                    alone[layer] = d
                if best is None or d < best[0]:
                    best = (d, layer)
                bar.update()
            assert best is not None
            committed.append(best[1])
            steps.append(best[0])
            bar.set_postfix(layer=best[1], divergence=f"{best[0]:.3g}")
            if rnd < rounds - 1:
                driver.divergence(make_plan(committed), start=best[1], keep_hidden=True)
    committed += sorted((i for i in range(L) if i not in committed), key=lambda i: (alone[i], i))
    return RankResult(kind, "greedy", tuple(committed), tuple(steps), tuple(alone),
                      driver.layer_evals - evals0, time.perf_counter() - t0)


def rank_fast(driver: Driver, make_plan: MakePlan, kind: str = "both") -> RankResult:
    """Each layer reduced alone (from the full-model cache), sorted by its divergence."""
    t0, evals0 = time.perf_counter(), driver.layer_evals
    driver.ensure_full_cache()
    L = driver.num_layers
    alone = []
    for layer in tqdm(range(L), desc=f"calibrate: fast ranking ({kind})", unit="layer",
                      disable=not driver.progress):
        alone.append(driver.divergence(make_plan([layer]), start=layer))
    order = tuple(sorted(range(L), key=lambda i: (alone[i], i)))
    return RankResult(kind, "fast", order, tuple(alone[i] for i in order), tuple(alone),
                      driver.layer_evals - evals0, time.perf_counter() - t0)


def rank_stats(driver: Driver, kind: str = "both") -> RankResult:
    """From the capture pass alone (no divergence evaluation): the relative size of each layer's
    update of the visual tokens — the whole layer (``both``), its attention output or its FFN
    output. A layer that barely changes the visual tokens is taken as redundant."""
    t0 = time.perf_counter()
    stats = driver.stats
    assert stats is not None, "capture() first"
    raw = {"both": stats.layer_update, "attention": stats.attn_update, "ffn": stats.ffn_update}[kind]
    score = [v / max(stats.samples, 1) for v in raw]
    order = tuple(sorted(range(len(score)), key=lambda i: (score[i], i)))
    return RankResult(kind, "stats", order, tuple(score[i] for i in order), tuple(score), 0,
                      time.perf_counter() - t0)


def rank(method: str, driver: Driver, make_plan: MakePlan, kind: str,
         rounds: int | None = None) -> RankResult:
    if method == "greedy":
        return rank_greedy(driver, make_plan, kind, rounds)
    if method == "fast":
        return rank_fast(driver, make_plan, kind)
    return rank_stats(driver, kind)
