"""``plan_from_model``: calibration data + model -> plan.json (DESIGN §3.3, §3.4, §4)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

from rlens.calibrate.config import DEFAULT_PROPORTION, CalibrationConfig
from rlens.calibrate.data import CalibrationSample, Encoded, builtin_calibration_set, encode_samples, \
    load_calibration_data
from rlens.calibrate.driver import Driver
from rlens.calibrate.rankings import RankResult, rank
from rlens.calibrate.report import CalibrationReport
from rlens.errors import InputError
from rlens.families.base import Family
from rlens.flops import Sizes, TokenLayout, flops_summary, plan_flops
from rlens.plan import LayerPlan, ModelInfo, Plan, Ranking, TokenPruning, ffn_keep_for
from rlens.pruning import PRUNING_METHODS
from rlens.reference.ffn import top_k_lower_index_first

Data = Sequence[CalibrationSample] | str | os.PathLike[str] | None


def plan_from_model(loaded: Any, config: CalibrationConfig,
                    data: Data = None) -> tuple[Plan, CalibrationReport]:
    """Calibrate ``loaded`` (a :class:`rlens.models.LoadedModel`) and return the plan and its report.

    ``data``: calibration samples, a JSONL file, or ``None`` for the built-in set. Raises
    :class:`InputError` for bad data or an unreachable budget before any ranking runs; writes
    nothing (the caller saves ``plan`` and calls :func:`write_report`).
    """
    if data is None:
        samples, origin = builtin_calibration_set(seed=config.seed), "builtin"
    elif isinstance(data, (str, os.PathLike)):
        samples, origin = load_calibration_data(data, config.max_samples), str(data)
    else:
        samples, origin = list(data), "samples"
    if config.max_samples is not None:
        samples = samples[:config.max_samples]
    if not samples:
        raise InputError("no calibration samples")
    encoded = encode_samples(loaded, samples, image_splitting=config.image_splitting)
    return plan_from_encoded(loaded.model, loaded.family, loaded.info(), encoded, config, origin)


def plan_from_encoded(model: Any, family: type[Family], info: ModelInfo, encoded: list[Encoded],
                      config: CalibrationConfig, origin: str = "samples") -> tuple[Plan, CalibrationReport]:
    """The calibration proper, on already encoded samples (also the benchmark's entry)."""
    t0 = time.perf_counter()
    sizes = Sizes.from_family_sizes(family.sizes(model.config))
    layout = token_layout(encoded, config)
    builder = PlanBuilder(info, config)
    builder.pruning = fixed_token_pruning(config, info.num_layers)
    later = _chosen_after_capture(config, builder.pruning)
    if later is None:
        chosen = layers_to_reduce(builder, sizes, layout, config)  # fails early on an unreachable budget
    driver = Driver(model, family, config.probes, config.cache_device, config.progress)
    driver.capture(encoded, config.batch_size)
    if later is not None:
        builder.pruning = TokenPruning(later, **PRUNING_METHODS[later].choose(driver, config))
        chosen = layers_to_reduce(builder, sizes, layout, config)
    builder.static_indices = static_ffn_indices(driver, builder.keep)
    capture_s = time.perf_counter() - t0
    rounds = chosen if config.greedy_rounds == "plan" else config.greedy_rounds
    results = {kind: rank(config.ranking, driver, builder.candidates(kind), kind, rounds,
                          config.greedy_cache_gib * 2**30)
               for kind in config.kinds}
    plan = builder.final(results, chosen)
    plan_div = driver.divergence(plan)
    curve = tuple(plan_flops(builder.final(results, k), sizes, layout).ratio
                  for k in range(info.num_layers + 1))
    seconds = time.perf_counter() - t0
    plan = _annotate(plan, results, sizes, layout, config, origin, len(encoded), seconds, plan_div,
                     driver.layer_evals)
    report = CalibrationReport(
        method=config.ranking, rankings=results, num_layers=info.num_layers, chosen=chosen,
        flops_ratio=plan.flops["ratio"], flops_curve=curve, budget=config.budget, plan_divergence=plan_div,
        layout=layout, samples=len(encoded), seconds=seconds, capture_seconds=capture_s,
        layer_evals=driver.layer_evals)
    return plan, report


def token_layout(encoded: list[Encoded], config: CalibrationConfig) -> TokenLayout:
    """Mean token counts of the calibration set, unless given in the config."""
    n = len(encoded)
    before = round(sum(e.visual_span[0] for e in encoded) / n)
    visual = round(sum(e.visual_span[1] for e in encoded) / n)
    after = round(sum(e.length - sum(e.visual_span) for e in encoded) / n)
    if config.visual_tokens is not None:
        visual = config.visual_tokens
    if config.text_tokens is not None:
        total_text = before + after
        before = round(before * config.text_tokens / total_text) if total_text else 0
        after = config.text_tokens - before
    return TokenLayout(visual=visual, text_after=after, text_before=before)


def layers_to_reduce(builder: PlanBuilder, sizes: Sizes, layout: TokenLayout,
                     config: CalibrationConfig) -> int:
    """``round(p * L)`` for ``--proportion``; for ``--budget`` the fewest layers whose FLOPs ratio
    is at or under it (every layer has the same size, so the count alone sets the ratio)."""
    L = builder.info.num_layers
    if config.budget is None:
        p = DEFAULT_PROPORTION if config.proportion is None else config.proportion
        return math.floor(p * L + 0.5)
    ratios = [plan_flops(builder.uniform(k), sizes, layout).ratio for k in range(L + 1)]
    for k, r in enumerate(ratios):
        if r <= config.budget + 1e-12:
            return k
    raise InputError(
        f"--budget {config.budget} cannot be met: with every layer reduced (window {config.window}, "
        f"ffn-keep {config.ffn_keep}) the prefill FLOPs ratio is {ratios[-1]:.4f} at {layout.visual} visual "
        f"and {layout.text} text tokens; raise --budget, or lower --ffn-keep / --window"
    )


def fixed_token_pruning(config: CalibrationConfig, num_layers: int) -> TokenPruning | None:
    """The token pruning given on the command line, when its flag fixes it (VTW auto is chosen
    after the capture pass: :func:`_chosen_after_capture`)."""
    for name, value in config.token_pruning_flags.items():
        fields = PRUNING_METHODS[name].fixed(value, num_layers)
        return None if fields is None else TokenPruning(name, **fields)
    return None


def _chosen_after_capture(config: CalibrationConfig, fixed: TokenPruning | None) -> str | None:
    """The pruning method that calibration must choose for (after the capture pass), if any."""
    given = config.token_pruning_flags
    return next(iter(given)) if given and fixed is None else None


def choose_vtw_layer(driver: Driver, config: CalibrationConfig) -> TokenPruning:
    """VTW's rule (:meth:`rlens.pruning.vtw.VTW.choose`)."""
    return TokenPruning("vtw", **PRUNING_METHODS["vtw"].choose(driver, config))


def with_token_pruning(plan: Plan, pruning: TokenPruning, sizes: Sizes, layout: TokenLayout,
                       budget: float | None = None) -> Plan:
    """``plan`` plus ``pruning`` (e.g. FastV K=2, R=0.5), its ``flops`` block recomputed. With
    ``budget``: keep only the plan's reduced layers that come first in its ranking order, as few
    as make the prefill FLOPs ratio <= budget (all of them if the budget is out of reach)."""
    from dataclasses import replace

    out = replace(plan, token_pruning=pruning)
    if budget is not None:
        order = list(plan.ranking.order) if plan.ranking else [lp.index for lp in plan.layers]
        order = [i for i in order if plan.layer(i) is not None]
        for k in range(len(order) + 1):
            out = replace(plan, token_pruning=pruning).with_layers([plan.layer(i) for i in order[:k]])
            if plan_flops(out, sizes, layout).ratio <= budget + 1e-12:
                break
    return replace(out, flops=flops_summary(out, sizes, layout))


def static_ffn_indices(driver: Driver, keep: int) -> list[tuple[int, ...]]:
    """Per layer: top-K of the probe scores averaged over all calibration samples (full model)."""
    stats = driver.stats
    assert stats is not None
    return [tuple(int(i) for i in top_k_lower_index_first(s / stats.samples, keep))
            for s in stats.probe_scores]


class PlanBuilder:
    """Plans for sets of reduced layers, with the config's window, keep and FFN mode."""

    def __init__(self, info: ModelInfo, config: CalibrationConfig) -> None:
        self.info = info
        self.config = config
        self.keep = ffn_keep_for(config.ffn_keep, info.intermediate_size)
        self.static_indices: list[tuple[int, ...]] | None = None
        self.pruning: TokenPruning | None = None  # part of every candidate plan

    def layer(self, index: int, attention: bool, ffn: bool) -> LayerPlan:
        static = self.config.ffn_mode == "static" and ffn
        return LayerPlan(index, hollow_window=self.config.window if attention else None,
                         ffn_keep=self.keep if ffn else None,
                         ffn_indices=self.static_indices[index] if static and self.static_indices else None)

    def plan(self, attention: Sequence[int], ffn: Sequence[int]) -> Plan:
        layers = [self.layer(i, i in attention, i in ffn) for i in sorted(set(attention) | set(ffn))]
        plan = Plan(model=self.info, ffn_mode=self.config.ffn_mode, ffn_probes=self.config.probes,
                    token_pruning=self.pruning)
        return plan.with_layers(layers)

    def uniform(self, k: int) -> Plan:
        return self.plan(range(k), range(k))

    def candidates(self, kind: str) -> Any:
        def make(layers: Sequence[int]) -> Plan:
            return self.plan(layers if kind != "ffn" else (), layers if kind != "attention" else ())

        return make

    def final(self, results: dict[str, RankResult], k: int) -> Plan:
        if "both" in results:
            top = results["both"].order[:k]
            return self.plan(top, top)
        return self.plan(results["attention"].order[:k], results["ffn"].order[:k])


def _ranking_json(r: RankResult) -> dict[str, Any]:
    key = "score" if r.method == "stats" else "divergence"
    return {"method": r.method, "order": list(r.order), key: [round(v, 8) for v in r.steps]}


def _annotate(plan: Plan, results: dict[str, RankResult], sizes: Sizes, layout: TokenLayout,
              config: CalibrationConfig, origin: str, n: int, seconds: float, plan_div: float,
              layer_evals: int) -> Plan:
    from dataclasses import replace

    main = results.get("both") or results["attention"]
    divergence = () if main.method == "stats" else tuple(main.steps)
    calib: dict[str, Any] = {
        "samples": n, "seconds": round(seconds, 3), "data": origin, "window": config.window,
        "ffn_keep_ratio": config.ffn_keep,
        "proportion": round(_reduced_count(plan) / plan.model.num_layers, 6), "budget": config.budget,
        "divergence": round(plan_div, 8), "layer_evaluations": layer_evals,
        "ranked": "separately" if config.separate else "together",
    }
    if main.method == "greedy" and len(main.steps) < len(main.order):
        calib["greedy_rounds"] = len(main.steps)
    if config.separate or main.method == "stats":
        calib["rankings"] = {kind: _ranking_json(r) for kind, r in results.items()}
    if config.token_pruning_flags:
        given = {m: getattr(config, m) for m in PRUNING_METHODS}
        given.update(vtw_eta=config.vtw_eta, vtw_min_layer=config.vtw_min_layer)
        calib["token_pruning"] = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}
    plan = replace(plan, ranking=Ranking(main.method, main.order, divergence), calibration=calib)
    return replace(plan, flops=flops_summary(plan, sizes, layout))


def _reduced_count(plan: Plan) -> int:
    return max(sum(lp.hollow_window is not None for lp in plan.layers),
               sum(lp.ffn_keep is not None for lp in plan.layers))


def dispatch_for_calibration(loaded: Any, max_memory: dict[Any, Any] | None = None,
                             device_map: dict[str, Any] | None = None) -> Any:
    """Spread a model that does not fit one accelerator over GPU(s) and CPU with accelerate,
    whole decoder layers per device. Layers placed on the CPU also *run* there. Calibration never
    copies the model: the full and the reduced runs share these weights. Without CUDA and
    ``device_map``: no-op. For disk offload (a model bigger than RAM), load the model with a
    placement instead (``load_model(..., placement=...)``, ``rlens calibrate --max-memory``)."""
    import torch

    if device_map is None and not torch.cuda.is_available():
        return loaded
    from accelerate import dispatch_model, infer_auto_device_map

    if device_map is None:
        layer_cls = type(loaded.family.decoder_layers(loaded.model)[0]).__name__
        device_map = infer_auto_device_map(loaded.model, max_memory=max_memory,
                                           no_split_module_classes=[layer_cls])
    if "disk" in set(device_map.values()):
        raise InputError("calibration cannot offload layers to disk; give it more CPU memory (max_memory)")
    main = "cpu" if "cpu" in set(device_map.values()) else None
    dispatch_model(loaded.model, device_map=device_map, main_device=main, force_hooks=True)
    return loaded
