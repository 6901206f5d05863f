"""Calibration (DESIGN §3.3, §3.4): the cached layer driver, rankings, static FFN dims, budget, data."""

from __future__ import annotations

import copy
import functools
import json
import math

import numpy as np
import pytest
import torch

from rlens.calibrate import (CalibrationConfig, builtin_calibration_set, format_table, load_calibration_data,
                             plan_from_model, write_report)
from rlens.calibrate.api import PlanBuilder, fixed_token_pruning, static_ffn_indices
from rlens.calibrate.data import encode_samples
from rlens.calibrate.driver import Driver
from rlens.calibrate.rankings import checkpoint_layers
from rlens.errors import InputError
from rlens.models import load_model
from rlens.plan import load_plan, plan_from_dict
from rlens.presets import PRESETS
from rlens.reference import reduced

FAST = dict(window=4, progress=False)


@functools.lru_cache(maxsize=None)
def _loaded(name: str):
    return load_model(name)


def _samples(n=3):
    return builtin_calibration_set(n)


def _driver(loaded, samples, batch_size=8, probes=64):
    driver = Driver(loaded.model, loaded.family, probes=probes, progress=False)
    driver.capture(encode_samples(loaded, samples), batch_size)
    return driver


# ---- the driver reproduces the model --------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_driver_reproduces_hf_logits(name):
    loaded = _loaded(name)
    samples = _samples(2)
    encoded = encode_samples(loaded, samples)
    driver = Driver(loaded.model, loaded.family, progress=False)
    driver.capture(encoded)
    info = loaded.info()
    builder = PlanBuilder(info, CalibrationConfig(**FAST))
    builder.static_indices = static_ffn_indices(driver, builder.keep)
    plan = builder.plan([0, 2], [1, 2])
    for g, enc in zip(driver.groups, encoded):
        with torch.no_grad():
            ref = loaded.model(**enc.inputs).logits
            out = driver.head(driver.run(g, 0)[0])
            assert (out - ref).abs().max().item() < 1e-5
            with reduced(loaded.model, plan, loaded.family) as state:
                ref_red = loaded.model(**enc.inputs).logits
                state.visual_span = g.visual_span
                out_red = driver.head(driver.run(g, 0)[0])
        assert (ref_red - ref).abs().max().item() > 1e-4  # the plan changes something
        assert (out_red - ref_red).abs().max().item() < 1e-5


def test_batched_group_matches_single_samples():
    loaded = _loaded("tiny-qwen2-vl")
    base = _samples(1)[0]
    other = builtin_calibration_set(4)[3]
    pair = [base, type(base)(other.image, base.prompt, base.answer, "x")]  # same shape, other image
    batched, single = _driver(loaded, pair, batch_size=8), _driver(loaded, pair, batch_size=1)
    assert len(batched.groups) == 1 and batched.groups[0].size == 2
    assert len(single.groups) == 2
    builder = PlanBuilder(loaded.info(), CalibrationConfig(**FAST))
    builder.static_indices = static_ffn_indices(batched, builder.keep)
    plan = builder.plan([1], [1, 2])
    assert abs(batched.divergence(plan) - single.divergence(plan)) < 1e-6
    assert batched.divergence(plan, start=1) == pytest.approx(batched.divergence(plan), abs=1e-7)


# ---- rankings ---------------------------------------------------------------------------------
def test_greedy_steps_equal_uncached_divergence():
    """The cached greedy (partial reruns) reaches exactly what full reruns give."""
    loaded = _loaded("tiny-llava")
    plan, report = plan_from_model(loaded, CalibrationConfig(ranking="greedy", **FAST), _samples(3))
    r = report.rankings["both"]
    driver = _driver(loaded, _samples(3))
    builder = PlanBuilder(loaded.info(), CalibrationConfig(**FAST))
    builder.static_indices = static_ffn_indices(driver, builder.keep)
    for k in range(1, len(r.order) + 1):
        uncached = driver.divergence(builder.plan(r.order[:k], r.order[:k]))
        assert uncached == pytest.approx(r.steps[k - 1], abs=1e-7)
    L = report.num_layers
    assert r.layer_evals < L * L * (L + 1) / 2  # cheaper than L(L+1)/2 full passes
    assert sorted(r.order) == list(range(L))


def _destroy(loaded, layer: int, scores: torch.Tensor, pairs: int = 16, factor: float = 20.0):
    """A copy whose FFN in ``layer`` has a huge visual-path reduction error and a normal full output:
    the ``pairs`` top-scoring hidden units k get ``factor`` x their down-projection, cancelled exactly
    (full FFN) by a low-scoring unit k' made a 0.1 x copy of k with -10 x its down column. The
    reduced FFN keeps k and drops k', so it loses the cancellation."""
    bad = copy.deepcopy(loaded)
    gate, up, down = bad.family.ffn_linears(bad.family.ffn(bad.family.decoder_layers(bad.model)[layer]))
    order = torch.sort(-scores, stable=True).indices
    with torch.no_grad():
        for k, k2 in zip(order[:pairs].tolist(), order.flip(0)[:pairs].tolist()):
            gate.weight[k2] = gate.weight[k]
            up.weight[k2] = 0.1 * up.weight[k]
            down.weight[:, k] *= factor
            down.weight[:, k2] = -10.0 * down.weight[:, k]
    return bad


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-internvl"])
def test_destructive_layer_ranks_last(name):
    loaded = _loaded(name)
    samples = _samples(3)
    _, before = plan_from_model(loaded, CalibrationConfig(ranking="fast", **FAST), samples)
    L = before.num_layers
    # the most redundant layer that can matter (the last layer's visual outputs never reach text logits)
    target = next(i for i in before.rankings["both"].order if i != L - 1)
    assert before.rankings["both"].order[-1] != target
    scores = _driver(loaded, samples).stats.probe_scores[target]
    bad = _destroy(loaded, target, scores)
    for method in ("greedy", "fast"):
        _, rep = plan_from_model(bad, CalibrationConfig(ranking=method, **FAST), samples)
        assert rep.rankings["both"].order[-1] == target, (method, rep.rankings["both"].order)
    for mode in ("static", "dynamic"):  # the full model is (nearly) unchanged: only the reduction hurts
        _, rep = plan_from_model(bad, CalibrationConfig(ranking="fast", ffn_mode=mode, **FAST), samples)
        assert rep.rankings["both"].sensitivity[target] > 3 * max(before.rankings["both"].sensitivity)


def test_stats_ranks_a_loud_layer_last():
    loaded = _loaded("tiny-llava")
    bad = copy.deepcopy(loaded)
    lyr = bad.family.decoder_layers(bad.model)[1]
    with torch.no_grad():
        bad.family.ffn_linears(bad.family.ffn(lyr))[2].weight.mul_(12.0)
        bad.family.attention(lyr).o_proj.weight.mul_(12.0)
    _, rep = plan_from_model(bad, CalibrationConfig(ranking="stats", **FAST), _samples(2))
    assert rep.rankings["both"].order[-1] == 1 and rep.layer_evals == 4  # only the final plan's check


def test_separate_rankings_and_dynamic_mode():
    loaded = _loaded("tiny-idefics3")
    cfg = CalibrationConfig(ranking="fast", separate=True, ffn_mode="dynamic", proportion=0.25, **FAST)
    plan, report = plan_from_model(loaded, cfg, _samples(2))
    assert set(report.rankings) == {"attention", "ffn"}
    assert sum(lp.hollow_window is not None for lp in plan.layers) == 1
    assert sum(lp.ffn_keep is not None for lp in plan.layers) == 1
    assert all(lp.ffn_indices is None for lp in plan.layers)
    assert set(plan.calibration["rankings"]) == {"attention", "ffn"}
    plan_from_dict(plan.to_json())


# ---- static FFN dimensions --------------------------------------------------------------------
def _oracle_static_units(hidden_visual: np.ndarray, probes: int, keep: int) -> tuple[list[int], np.ndarray]:
    """DESIGN §3.2 written out in numpy (no rlens helper): probes are every ceil(N_v / M)-th visual
    token from the first (all if N_v <= M); s_k = mean_p |silu(W_gate x_p)_k * (W_up x_p)_k|; the
    kept units are the top-K of s (ties: lower index first), ascending."""
    n = hidden_visual.shape[0]
    rows = list(range(n)) if n <= probes else list(range(0, n, math.ceil(n / probes)))
    scores = np.abs(hidden_visual[rows].astype(np.float64)).mean(axis=0)
    order = sorted(range(scores.shape[0]), key=lambda k: (-scores[k], k))
    return sorted(order[:keep]), scores


def test_static_indices_match_an_independent_selection_for_one_sample():
    loaded = _loaded("tiny-qwen2-vl")
    enc = encode_samples(loaded, _samples(1))[0]
    driver = Driver(loaded.model, loaded.family, probes=5, progress=False)
    driver.capture([enc])
    keep = 48
    got = static_ffn_indices(driver, keep)
    start, length = enc.visual_span
    seen = {}
    fam = loaded.family

    def hook(i):
        def h(mod, args):
            x = args[0][0, start:start + length]
            gate, up, _ = fam.ffn_linears(mod)
            seen[i] = (torch.nn.functional.silu(gate(x)) * up(x)).float().numpy()
        return h

    layers = fam.decoder_layers(loaded.model)
    handles = [fam.ffn(lyr).register_forward_pre_hook(hook(i)) for i, lyr in enumerate(layers)]
    with torch.no_grad():
        loaded.model(**enc.inputs)
    for h in handles:
        h.remove()
    assert length > 5  # the strided probe rule is exercised
    for i, idx in enumerate(got):
        want, scores = _oracle_static_units(seen[i], 5, keep)
        ranked = np.sort(scores)[::-1]
        if ranked[keep - 1] - ranked[keep] > 1e-6 * ranked[0]:  # no near-tie at the cut
            assert list(idx) == want, i
        assert len(idx) == keep and list(idx) == sorted(idx)
        assert scores[list(idx)].min() >= np.delete(scores, list(idx)).max() - 1e-6 * ranked[0]


def test_static_indices_average_over_samples():
    loaded = _loaded("tiny-llava")
    driver = _driver(loaded, _samples(3), probes=64)
    scores = driver.stats.probe_scores[1] / 3
    idx = static_ffn_indices(driver, 16)[1]
    assert len(idx) == 16 and list(idx) == sorted(idx)
    assert scores[list(idx)].min() >= np.delete(scores.numpy(), list(idx)).max()


# ---- every preset: a plan that validates ------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_calibrates_to_a_valid_plan(name, tmp_path):
    loaded = _loaded(name)
    plan, report = plan_from_model(loaded, CalibrationConfig(ranking="greedy", max_samples=2, **FAST))
    path = plan.save(tmp_path / "plan.json")
    again = load_plan(path, loaded.info())
    assert again.ranking.method == "greedy" and len(again.ranking.order) == report.num_layers
    assert len(again.layers) == 2 and all(len(lp.ffn_indices) == lp.ffn_keep for lp in again.layers)
    assert again.flops["ratio"] == pytest.approx(report.flops_ratio, abs=1e-6) and report.flops_ratio < 1
    assert again.calibration["samples"] == 2


# ---- budget -----------------------------------------------------------------------------------
def test_budget_picks_smallest_proportion_meeting_it():
    loaded = _loaded("tiny-llava")
    _, full = plan_from_model(loaded, CalibrationConfig(ranking="stats", proportion=1.0, **FAST), _samples(2))
    curve = full.flops_curve
    budget = (curve[2] + curve[3]) / 2  # needs 3 layers
    plan, rep = plan_from_model(loaded, CalibrationConfig(ranking="stats", budget=budget, **FAST),
                                _samples(2))
    assert rep.chosen == 3 and len(plan.layers) == 3 and plan.flops["ratio"] <= budget
    _, exact = plan_from_model(loaded, CalibrationConfig(ranking="stats", budget=curve[2], **FAST),
                               _samples(2))
    assert exact.chosen == 2


def test_unreachable_budget_is_one_clear_error():
    loaded = _loaded("tiny-llava")
    with pytest.raises(InputError, match="cannot be met.*every layer reduced"):
        plan_from_model(loaded, CalibrationConfig(budget=0.3, **FAST), _samples(1))


def test_token_count_overrides_change_the_flops():
    loaded = _loaded("tiny-llava")
    cfg = CalibrationConfig(ranking="stats", visual_tokens=1024, text_tokens=64, **FAST)
    plan, rep = plan_from_model(loaded, cfg, _samples(1))
    assert plan.flops["visual_tokens"] == 1024 and plan.flops["text_tokens"] == 64
    assert rep.layout.visual == 1024


# ---- data -------------------------------------------------------------------------------------
def _write_data(tmp_path, rows):
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    f = tmp_path / "data.jsonl"
    f.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return f


def test_data_file_reads_relative_images(tmp_path):
    f = _write_data(tmp_path, [{"image": "a.png", "prompt": "Colour?"}, "",
                               {"image": "a.png", "prompt": "Colour?", "answer": "green"}])
    samples = load_calibration_data(f)
    assert len(samples) == 2 and samples[1].answer == "green" and samples[1].source.endswith("data.jsonl:3")
    loaded = _loaded("tiny-qwen2-vl")
    enc = encode_samples(loaded, samples)
    n_answer = enc[1].length - enc[0].length
    assert n_answer == len("green") and enc[1].positions == tuple(range(enc[1].length - 6, enc[1].length - 1))
    assert enc[0].positions[0] == sum(enc[0].visual_span) and enc[0].positions[-1] == enc[0].length - 1


@pytest.mark.parametrize("row, message", [
    ({"image": "missing.png", "prompt": "x"}, r"data.jsonl:2: image .*missing.png not found"),
    ({"image": "bad.png", "prompt": "x"}, r"data.jsonl:2: cannot read image"),
    ('{"image": "a.png", "prompt": ', r"data.jsonl:2: not valid JSON"),
    ({"image": "a.png"}, r"data.jsonl:2: 'prompt' must be"),
    ({"image": "a.png", "prompt": "x", "extra": 1}, r"data.jsonl:2: unknown keys"),
])
def test_bad_data_names_the_line(tmp_path, row, message):
    f = _write_data(tmp_path, [{"image": "a.png", "prompt": "fine"}, row])
    with pytest.raises(InputError, match=message):
        load_calibration_data(f)


def test_empty_or_unreadable_data_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="no calibration samples"):
        load_calibration_data(tmp_path / "empty.jsonl")
    with pytest.raises(InputError, match="cannot read calibration data"):
        load_calibration_data(tmp_path / "nope.jsonl")


def test_image_markers_in_a_prompt_are_text_not_a_second_image_slot(tmp_path):
    f = _write_data(tmp_path, [{"image": "a.png", "prompt": "ok"},
                               {"image": "a.png", "prompt": "look <|image_pad|> here"}])
    loaded = _loaded("tiny-qwen2-vl")
    plain, marked = encode_samples(loaded, load_calibration_data(f))
    assert marked.visual_span == plain.visual_span  # one span: the typed marker did not become image tokens
    assert marked.length > plain.length


def test_builtin_set_is_deterministic():
    a, b = builtin_calibration_set(6), builtin_calibration_set(6)
    assert [np.asarray(s.image).tobytes() for s in a] == [np.asarray(s.image).tobytes() for s in b]
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert any(s.answer for s in a) and any(s.answer is None for s in a)
    other = builtin_calibration_set(1, seed=1)[0].image
    assert np.asarray(other).tobytes() != np.asarray(a[0].image).tobytes()


@pytest.mark.parametrize("kwargs, message", [
    (dict(ranking="random"), "--ranking"), (dict(ffn_mode="x"), "--ffn-mode"),
    (dict(budget=0.5, proportion=0.5), "not both"), (dict(budget=1.5), "--budget"),
    (dict(ffn_keep=0.0), "--ffn-keep"), (dict(window=0), "--window"), (dict(max_samples=0), "--max-samples"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        CalibrationConfig(**kwargs)


# ---- report -----------------------------------------------------------------------------------
def test_report_png_and_table(tmp_path):
    loaded = _loaded("tiny-qwen2.5-vl")
    plan, report = plan_from_model(loaded, CalibrationConfig(ranking="fast", max_samples=2, **FAST))
    png = write_report(report, tmp_path / "plan.report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(report)
    assert len(table.splitlines()) == report.num_layers + 3
    assert "FLOPs ratio" in table and "layer evaluations" in table


def test_driver_runs_through_accelerate_hooks():
    """Layers dispatched by accelerate (per-layer device hooks) give the same divergences."""
    loaded = copy.deepcopy(_loaded("tiny-llava"))
    samples = _samples(2)
    cfg = CalibrationConfig(ranking="fast", **FAST)
    _, ref = plan_from_model(loaded, cfg, samples)
    from rlens.calibrate import dispatch_for_calibration

    lm_path = loaded.family.language_model_path  # every decoder layer its own dispatched module
    lm = loaded.family.language_model(loaded.model)
    device_map = {f"{lm_path}.{n}": "cpu" for n, _ in lm.named_children() if n != "layers"}
    device_map.update({f"{lm_path}.layers.{i}": "cpu" for i in range(len(lm.layers))})
    towers = [n for n, _ in loaded.model.model.named_children() if n != "language_model"]
    device_map.update({f"model.{n}": "cpu" for n in towers})
    device_map["lm_head"] = "cpu"
    dispatch_for_calibration(loaded, device_map=device_map)
    assert hasattr(lm.layers[1], "_hf_hook")
    _, got = plan_from_model(loaded, cfg, samples)
    assert got.rankings["both"].sensitivity == pytest.approx(ref.rankings["both"].sensitivity, abs=1e-7)


def test_proportion_zero_and_one():
    loaded = _loaded("tiny-llava")
    cfg0 = CalibrationConfig(ranking="stats", proportion=0.0, **FAST)
    none, rep0 = plan_from_model(loaded, cfg0, _samples(1))
    assert none.layers == () and rep0.flops_ratio == 1.0 and rep0.plan_divergence == 0.0
    plan_from_dict(none.to_json())
    cfg1 = CalibrationConfig(ranking="stats", proportion=1.0, **FAST)
    every, rep1 = plan_from_model(loaded, cfg1, _samples(1))
    assert len(every.layers) == 4 and rep1.flops_ratio == pytest.approx(rep1.flops_curve[-1])


def test_greedy_stopped_at_the_plan_gives_the_same_plan_for_less():
    loaded = _loaded("tiny-internvl")
    full_plan, full = plan_from_model(loaded, CalibrationConfig(ranking="greedy", **FAST), _samples(2))
    cut_plan, cut = plan_from_model(loaded, CalibrationConfig(ranking="greedy", greedy_rounds="plan", **FAST),
                                    _samples(2))
    assert cut_plan.layers == full_plan.layers and cut.chosen == 2
    r_full, r_cut = full.rankings["both"], cut.rankings["both"]
    assert r_cut.order[:2] == r_full.order[:2] and r_cut.steps == r_full.steps[:2]
    assert sorted(r_cut.order) == list(range(4)) and r_cut.layer_evals < r_full.layer_evals
    assert cut_plan.calibration["greedy_rounds"] == 2 and len(cut_plan.ranking.divergence) == 2
    assert "-" in format_table(cut)
    with pytest.raises(InputError, match="--greedy-rounds"):
        CalibrationConfig(greedy_rounds=0)


def test_cache_device_option_gives_the_same_ranking():
    loaded = _loaded("tiny-llava")
    _, a = plan_from_model(loaded, CalibrationConfig(ranking="fast", **FAST), _samples(2))
    _, b = plan_from_model(loaded, CalibrationConfig(ranking="fast", cache_device="cpu", **FAST), _samples(2))
    assert a.rankings["both"].sensitivity == b.rankings["both"].sensitivity


# ---- greedy's checkpoints ---------------------------------------------------------------------
def _deep(name: str, layers: int):
    """A preset with more decoder layers (greedy's checkpoints matter with depth)."""
    import dataclasses

    from rlens.families import family_for_config
    from rlens.models import LoadedModel
    from rlens.presets import build_model, get_preset

    preset = get_preset(name)
    config = dict(preset.config, text_config=dict(preset.config["text_config"], num_hidden_layers=layers))
    model = build_model(dataclasses.replace(preset, config=config))
    return LoadedModel(model=model, family=family_for_config(model.config), source=name, preset=preset)


def test_checkpoint_layers_fit_the_budget():
    assert checkpoint_layers(8, 10, 1e9) == frozenset(range(1, 8))  # sum 28 states
    assert checkpoint_layers(8, 10, 280) == frozenset(range(1, 8))
    assert checkpoint_layers(8, 10, 279) == frozenset({2, 4, 6})  # sum 12
    assert checkpoint_layers(8, 10, 119) == frozenset({3, 6})
    assert checkpoint_layers(8, 10, 69) == frozenset({4})
    assert checkpoint_layers(8, 10, 39) == frozenset()
    assert checkpoint_layers(8, 10, 0) == frozenset()


@pytest.mark.slow
@pytest.mark.parametrize("fastv", [None, (6, 0.5)])
def test_greedy_checkpoints_change_the_cost_not_the_ranking(fastv):
    """Candidates resuming from their checkpoints reach exactly what resuming from their own layer
    (budget 0) and what a run from layer 0 give, for fewer layer evaluations; with FastV only the
    inputs up to its score layer are kept."""
    loaded, samples = _deep("tiny-llava", 10), _samples(2)
    driver = _driver(loaded, samples)
    state = driver.state_bytes()
    assert checkpoint_layers(10, state, 20 * state) == frozenset({2, 4, 6, 8})
    runs = {}
    for label, gib in (("none", 0.0), ("strided", 20 * state / 2**30), ("all", 4.0)):
        cfg = CalibrationConfig(ranking="greedy", greedy_cache_gib=gib, fastv=fastv, **FAST)
        _, report = plan_from_model(loaded, cfg, samples)
        runs[label] = report.rankings["both"]
    none, strided, every = runs["none"], runs["strided"], runs["all"]
    assert every.order == strided.order == none.order and every.steps == strided.steps == none.steps
    assert every.layer_evals < strided.layer_evals < none.layer_evals
    builder = PlanBuilder(loaded.info(), CalibrationConfig(fastv=fastv, **FAST))
    builder.pruning = fixed_token_pruning(builder.config, 10)
    builder.static_indices = static_ffn_indices(driver, builder.keep)
    for k in range(1, 11):
        prefix = every.order[:k]
        assert driver.divergence(builder.plan(prefix, prefix)) == pytest.approx(every.steps[k - 1], abs=1e-7)
    # the layer inputs a run keeps (to resume from later): all, or with FastV K=6 only those up to
    # its score layer 5 (later ones are pruned, shorter)
    _, kept = driver.divergence_from(builder.plan(every.order[:1], every.order[:1]), 0, record=frozenset(range(11)))
    assert set(kept) == (set(range(1, 6)) if fastv else set(range(1, 10)))
    with pytest.raises(InputError, match="--greedy-cache"):
        CalibrationConfig(greedy_cache_gib=-1.0)
