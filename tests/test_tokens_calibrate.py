"""Calibration with token pruning: --fastv / --vtw, VTW's automatic layer, pruned greedy ranking."""

from __future__ import annotations

import functools

import pytest
import torch

from rlens.calibrate import CalibrationConfig, builtin_calibration_set, plan_from_model, with_token_pruning
from rlens.calibrate.api import PlanBuilder, static_ffn_indices
from rlens.calibrate.data import encode_samples
from rlens.calibrate.driver import Driver, last_prompt_position
from rlens.errors import InputError
from rlens.flops import Sizes, TokenLayout, plan_flops
from rlens.models import load_model
from rlens.plan import Plan, TokenPruning, plan_from_dict
from rlens.reference import reduced

FAST = dict(window=4, progress=False)


@functools.lru_cache(maxsize=None)
def _loaded(name: str):
    return load_model(name)


def _driver(loaded, n=3):
    driver = Driver(loaded.model, loaded.family, progress=False)
    driver.capture(encode_samples(loaded, builtin_calibration_set(n)))
    return driver


def test_config_checks():
    with pytest.raises(InputError, match="not both"):
        CalibrationConfig(fastv=(2, 0.5), vtw="auto")
    with pytest.raises(InputError, match="--fastv"):
        CalibrationConfig(fastv=(0, 0.5))
    with pytest.raises(InputError, match="--vtw"):
        CalibrationConfig(vtw="sometimes")


@pytest.mark.slow
def test_fastv_greedy_plan_carries_pruning_and_steps_equal_uncached():
    loaded = _loaded("tiny-llava")
    cfg = CalibrationConfig(ranking="greedy", fastv=(2, 0.5), **FAST)
    plan, report = plan_from_model(loaded, cfg, builtin_calibration_set(2))
    assert plan.token_pruning == TokenPruning("fastv", 2, 0.5)
    assert plan_from_dict(plan.to_json()) == plan
    assert plan.flops["visual_tokens_after_pruning"] < plan.flops["visual_tokens"]
    driver = _driver(loaded, 2)
    builder = PlanBuilder(loaded.info(), cfg)
    builder.pruning = plan.token_pruning
    builder.static_indices = static_ffn_indices(driver, builder.keep)
    r = report.rankings["both"]
    for k in range(1, len(r.order) + 1):
        assert driver.divergence(builder.plan(r.order[:k], r.order[:k])) == pytest.approx(r.steps[k - 1], abs=1e-7)


@pytest.mark.slow
def test_withdrawal_divergence_is_vtw_kl_from_a_full_forward():
    """The cached criterion equals KL(P_withdrawn || P_full) computed from complete HF forwards."""
    loaded = _loaded("tiny-qwen2-vl")
    encoded = encode_samples(loaded, builtin_calibration_set(2))
    driver = Driver(loaded.model, loaded.family, progress=False)
    driver.capture(encoded)
    got = driver.withdrawal_divergence(2)
    total = 0.0
    for enc in encoded:
        last = int(last_prompt_position(torch.tensor(enc.positions), enc.length))
        with torch.no_grad():
            full = loaded.model(**enc.inputs).logits[0, last].log_softmax(-1)
            plan = Plan(model=loaded.info(), token_pruning=TokenPruning("vtw", 2))
            with reduced(loaded.model, plan, loaded.family) as st:
                out = loaded.model(**enc.inputs).logits[0]
                dropped = st.pruning.dropped
        w = out[last - dropped if last >= sum(enc.visual_span) else last].log_softmax(-1)
        total += float((w.exp() * (w - full)).sum())
    assert got == pytest.approx(total / len(encoded), abs=1e-6)


@pytest.mark.slow
def test_vtw_auto_picks_first_layer_under_eta():
    loaded = _loaded("tiny-qwen2-vl")
    driver = _driver(loaded, 2)
    kls = [driver.withdrawal_divergence(k) for k in range(1, 4)]
    eta = sorted(kls)[1]
    cfg = CalibrationConfig(ranking="stats", vtw="auto", vtw_eta=eta, vtw_min_layer=1, **FAST)
    plan, _ = plan_from_model(loaded, cfg, builtin_calibration_set(2))
    tp = plan.token_pruning
    want = 1 + next(i for i, v in enumerate(kls) if v <= eta)
    assert (tp.method, tp.layer, tp.chosen_by, tp.eta) == ("vtw", want, "auto", eta)
    none, _ = plan_from_model(loaded, CalibrationConfig(ranking="stats", vtw="auto", vtw_eta=0.0, vtw_min_layer=1,
                                                        **FAST), builtin_calibration_set(2))
    assert none.token_pruning.layer == 4  # no layer qualifies: nothing withdrawn


def test_with_token_pruning_meets_a_budget():
    loaded = _loaded("tiny-internvl")
    base, _ = plan_from_model(loaded, CalibrationConfig(ranking="stats", proportion=1.0, **FAST),
                              builtin_calibration_set(1))
    sizes = Sizes.from_family_sizes(loaded.family.sizes(loaded.model.config))
    layout = TokenLayout(visual=1024, text_after=64)
    fastv = TokenPruning("fastv", 2, 0.5)
    alone = plan_flops(Plan(model=base.model, token_pruning=fastv), sizes, layout).ratio
    both = with_token_pruning(base, fastv, sizes, layout, budget=alone - 0.05)
    assert both.token_pruning == fastv and both.flops["ratio"] <= alone - 0.05
    assert len(both.layers) < len(base.layers) or both.flops["ratio"] == plan_flops(
        Plan(model=base.model, layers=base.layers, token_pruning=fastv), sizes, layout).ratio


@pytest.mark.slow
def test_cli_calibrate_fastv_and_inspect(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "rlens.cli.main", "calibrate", "tiny-llava", "--out", str(out), "--fastv", "2,0.5",
           "--ranking", "stats", "--max-samples", "1", "--window", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert plan_from_dict(__import__("json").loads(out.read_text())).token_pruning == TokenPruning("fastv", 2, 0.5)
    r = subprocess.run([sys.executable, "-m", "rlens.cli.main", "inspect", "tiny-llava", "--plan", str(out),
                        "--visual-tokens", "16", "--text-tokens", "8"], capture_output=True, text=True)
    assert r.returncode == 0 and "FastV K=2 R=0.5" in r.stdout and "     8 " in r.stdout, r.stdout + r.stderr
    bad = subprocess.run(cmd[:-6] + ["--fastv", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "K,R" in bad.stderr
