"""Layer rankings (DESIGN §3.3): ``greedy`` (the paper's), ``fast`` (each layer alone), ``stats``.

A ranking orders the decoder layers from most to least redundant. ``make_plan(layers)`` gives
the candidate plan reducing exactly ``layers`` (with the reductions of the ranked kind).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlens.calibrate.driver import Driver, pruning_start
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


# ---- greedy --------------------------------------------------------------------------------
# The paper's greedy ranking (DESIGN §3.3), made affordable by resuming candidates.
#
# Round r evaluates every uncommitted layer ``l`` reduced on top of the committed set ``S``. The
# input of layer ``k`` depends only on the configuration of layers ``0 .. k-1``, so:
#
# - the committed set's own inputs (the driver's cache) serve every candidate up to its layer:
#   candidate ``l`` never recomputes layers before ``l``;
# - a candidate's inputs of layers ``k > l``, computed with ``S + {l}``, stay exact after the next
#   winner ``w`` is committed for every ``k <= w`` (layers before ``k`` are configured the same),
#   so in the next round candidate ``l`` resumes from the deepest such checkpoint instead of from
#   ``l``. Greedy tends to commit late layers first, where this saves most;
# - the winner's checkpoints become the committed set's cache: committing costs nothing.
#
# Checkpoints cost memory: at most ``sum(k for k in kept layers)`` layer inputs of the whole
# calibration set (round one). ``checkpoint_layers`` keeps every layer when that fits the budget,
# else every s-th layer; with budget 0 candidates resume from their own layer only. Results are
# the same either way (tested): only the number of layer evaluations changes.

def checkpoint_layers(num_layers: int, state_bytes: int, budget_bytes: float) -> frozenset[int]:
    """The layers whose inputs candidates keep: every layer when the worst case (round one:
    ``k`` candidates keep layer ``k``'s input) fits ``budget_bytes``, else every s-th layer for the
    smallest stride s that fits, else none."""
    for stride in range(1, num_layers):
        kept = frozenset(range(stride, num_layers, stride))
        if sum(kept) * state_bytes <= budget_bytes:
            return kept
    return frozenset()


def rank_greedy(driver: Driver, make_plan: MakePlan, kind: str, rounds: int | None,
                cache_bytes: float) -> RankResult:
    """Start from no reduced layer; each round add the layer whose reduction (on top of the
    committed ones) gives the smallest divergence (ties: lower index). ``cache_bytes``: the
    checkpoints' memory budget (:func:`checkpoint_layers`).

    ``rounds`` < L stops early: the order's first ``rounds`` layers are greedy's (so is any plan
    reducing at most that many), the rest follow in fast order (round one's divergences) and
    ``steps`` has ``rounds`` entries."""
    t0, evals0 = time.perf_counter(), driver.layer_evals
    driver.ensure_full_cache()
    L = driver.num_layers
    rounds = L if rounds is None else max(1, min(rounds, L))
    keep = checkpoint_layers(L, driver.state_bytes(), cache_bytes)
    saved: dict[int, dict[int, list[torch.Tensor]]] = {i: {} for i in range(L)}  # candidate -> layer -> inputs
    committed: list[int] = []
    steps: list[float] = []
    alone = [math.nan] * L
    with tqdm(total=sum(L - r for r in range(rounds)), desc=f"calibrate: greedy ranking ({kind})",
              unit="eval", disable=not driver.progress) as bar:
        for rnd in range(rounds):
            best: tuple[float, int] | None = None
            for layer in sorted(saved):
                own = saved[layer]
                start = max(own, default=layer)
                d, states = driver.divergence_from(make_plan([*committed, layer]), start, own.get(start), keep)
                own.update(states)
                if rnd == 0:
                    alone[layer] = d
                if best is None or d < best[0]:
                    best = (d, layer)
                bar.update()
            assert best is not None
            winner = best[1]
            committed.append(winner)
            steps.append(best[0])
            bar.set_postfix(layer=winner, divergence=f"{best[0]:.3g}")
            states = saved.pop(winner)
            if rnd < rounds - 1:
                _commit(driver, make_plan(committed), winner, states)
                for own in saved.values():  # inputs of layers after the winner are stale now
                    for k in [k for k in own if k > winner]:
                        del own[k]
    committed += sorted((i for i in range(L) if i not in committed), key=lambda i: (alone[i], i))
    return RankResult(kind, "greedy", tuple(committed), tuple(steps), tuple(alone),
                      driver.layer_evals - evals0, time.perf_counter() - t0)


def _commit(driver: Driver, plan: Plan, winner: int, states: dict[int, list[torch.Tensor]]) -> None:
    """The winner's checkpoints become the cache; a run from the winner on fills in what strided
    checkpoints left out."""
    later = frozenset(range(winner + 1, min(driver.num_layers, pruning_start(plan) + 1)))
    if not later <= states.keys():
        _, states = driver.divergence_from(plan, winner, record=later)
    driver.commit(states)


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


def rank(method: str, driver: Driver, make_plan: MakePlan, kind: str, rounds: int | None,
         cache_bytes: float) -> RankResult:
    """``rounds`` and ``cache_bytes`` (greedy only): see :func:`rank_greedy`."""
    if method == "greedy":
        return rank_greedy(driver, make_plan, kind, rounds, cache_bytes)
    if method == "fast":
        return rank_fast(driver, make_plan, kind)
    return rank_stats(driver, kind)
