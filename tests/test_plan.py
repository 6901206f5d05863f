"""plan.json: round trip, validation messages, and corrupt plans never give a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlens.errors import PlanError
from rlens.plan import LayerPlan, ModelInfo, Plan, Ranking, ffn_keep_for, load_plan, plan_from_dict, plan_from_json_text

INFO = ModelInfo("Qwen2VLForConditionalGeneration", 4, 64, 176, "sha256:abc")


def _plan() -> Plan:
    return Plan(
        model=INFO,
        layers=(LayerPlan(3, hollow_window=8, ffn_keep=48, ffn_indices=tuple(range(48))), LayerPlan(1, hollow_window=8)),
        ffn_mode="static",
        ranking=Ranking("greedy", (3, 1, 0, 2), (0.01, 0.02, 0.5, 0.9)),
        flops={"visual_tokens": 16, "text_tokens": 40, "ratio": 0.8, "ratio_fastv_convention": 0.82},
        calibration={"samples": 2, "seconds": 1.5},
    )


def test_round_trip(tmp_path):
    plan = _plan().with_layers(_plan().layers)
    path = plan.save(tmp_path / "plan.json")
    again = load_plan(path, INFO)
    assert again == plan
    assert again.dumps() == plan.dumps()
    assert [lp.index for lp in again.layers] == [1, 3]


def test_ffn_keep_rule():
    assert ffn_keep_for(0.2, 18944) == 3792
    assert ffn_keep_for(1.0, 176) == 176
    assert ffn_keep_for(0.01, 100) == 16
    with pytest.raises(PlanError):
        ffn_keep_for(0.0, 100)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.update(format="x"), "'format' must be"),
        (lambda d: d.update(version=2), "unsupported plan version 2"),
        (lambda d: d["layers"].append(dict(d["layers"][0])), "listed twice"),
        (lambda d: d["layers"][0].update(index=4), "index=4 is above 3"),
        (lambda d: d["layers"][0].update(ffn_indices=[0] * 48), "duplicates"),
        (lambda d: d["layers"][0].update(ffn_indices=list(range(47))), "47 ffn_indices for ffn_keep=48"),
        (lambda d: d["layers"][0].update(ffn_keep=500), "above 176"),
        (lambda d: d["layers"][0].pop("ffn_indices"), "static FFN mode needs ffn_indices"),
        (lambda d: d["layers"][1].pop("hollow_window"), "reduces nothing"),
        (lambda d: d.update(ffn_mode="fast"), "'ffn_mode' must be one of"),
        (lambda d: d["model"].update(num_layers="4"), "must be an integer"),
        (lambda d: d["ranking"].update(order=[0, 0]), "ranking.order has duplicates"),
    ],
)
def test_validation_messages(mutate, message):
    data = _plan().to_json()
    mutate(data)
    with pytest.raises(PlanError, match=message):
        plan_from_dict(data, "p.json")


@pytest.mark.parametrize(
    "other,message",
    [
        (ModelInfo("X", 5, 64, 176, "sha256:abc"), "num_layers=4"),
        (ModelInfo("X", 4, 32, 176, "sha256:abc"), "hidden_size=64"),
        (ModelInfo("X", 4, 64, 176, "sha256:def"), "fingerprint"),
    ],
)
def test_plan_must_match_model(other, message):
    with pytest.raises(PlanError, match=message):
        _plan().check_matches(other)


def test_malformed_json():
    with pytest.raises(PlanError, match="not valid JSON"):
        plan_from_json_text('{"format": "rlens.plan",', "p.json")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_json)
def test_random_json_never_tracebacks(data):
    try:
        plan_from_dict(data)
    except PlanError:
        pass


@settings(max_examples=300, deadline=None)
@given(key_path=st.lists(st.sampled_from(["model", "layers", "ranking", 0, 1, "index", "ffn_indices",
                                          "hollow_window", "ffn_keep", "order", "num_layers", "version"]),
                         min_size=1, max_size=3),
       value=_json)
def test_corrupted_valid_plan_never_tracebacks(key_path, value):
    data = _plan().to_json()
    node = data
    for key in key_path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return
    try:
        node[key_path[-1]] = value
    except (TypeError, IndexError):
        return
    try:
        plan = plan_from_dict(data)
        plan.check_matches(INFO)
    except PlanError:
        pass


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60))
def test_random_text_never_tracebacks(text):
    try:
        plan_from_json_text(text)
    except PlanError:
        pass


def test_cli_bad_plan_exits_2(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"format": "rlens.plan", "version": 9}))
    r = subprocess.run([sys.executable, "-m", "rlens.cli.main", "inspect", "tiny-llava", "--plan", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unsupported plan version 9" in r.stderr
