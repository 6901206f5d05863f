"""decoder.onnx with token pruning (FastV, VTW, combined with RedundancyLens) vs the PyTorch
reference: prefill + 3 decode steps, per-layer KV lengths, batch, padding, plugin, fp16, bundle."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from helpers import ort_session as session

from rlens.export import ExportConfig, bundle_from_plan
from rlens.export.decoder import decoder_model, geometry
from rlens.export.tokens import PAST_DIM, TOTAL_DIM
from rlens.export.verify import check_decoder, reference_step, sample
from rlens.models import load_model
from rlens.plan import LayerPlan, Plan, TokenPruning
from rlens.presets import PRESETS

TOL = 1e-4


@pytest.fixture(scope="module", params=list(PRESETS))
def loaded(request):
    return load_model(request.param)


def _rl(info):
    m = info.intermediate_size
    return (LayerPlan(0, hollow_window=4, ffn_keep=32, ffn_indices=tuple(range(3, 99, 3))),
            LayerPlan(2, hollow_window=5),
            LayerPlan(3, hollow_window=3, ffn_keep=48, ffn_indices=tuple(range(m - 48, m))))


def plans(info):
    rl = _rl(info)
    dyn = tuple(LayerPlan(i, hollow_window=3, ffn_keep=32) for i in range(info.num_layers))
    return {
        "fastv": Plan(model=info, token_pruning=TokenPruning("fastv", 2, 0.5)),
        "vtw": Plan(model=info, token_pruning=TokenPruning("vtw", 2)),
        "redundancylens": Plan(model=info, layers=rl),
        "combined_fastv": Plan(model=info, layers=rl, token_pruning=TokenPruning("fastv", 1, 0.5)),
        "combined_dynamic": Plan(model=info, layers=dyn, ffn_mode="dynamic", ffn_probes=4,
                                 token_pruning=TokenPruning("fastv", 2, 0.6)),
        "combined_vtw": Plan(model=info, layers=rl, token_pruning=TokenPruning("vtw", 3)),
        "combined_vtw_dynamic": Plan(model=info, layers=dyn, ffn_mode="dynamic", ffn_probes=4,
                                     token_pruning=TokenPruning("vtw", 2)),
    }


@pytest.mark.parametrize("kind", ["fastv", "vtw", "redundancylens", "combined_fastv", "combined_dynamic",
                                  "combined_vtw", "combined_vtw_dynamic"])
def test_pruned_decoder_matches_reference(loaded, kind):
    plan = plans(loaded.info())[kind]
    cmp = check_decoder(session(decoder_model(loaded, plan)), loaded, plan, geometry(loaded), steps=3)
    print(f"{loaded.source} {kind} max_abs_diff={cmp.max_abs_diff:.3g}", json.dumps(cmp.per_output))
    assert cmp.max_abs_diff <= TOL, cmp.per_output
    assert {"prefill.logits", "decode.logits", "decode.present.key"} <= set(cmp.per_output)


def _prefill(plan, lm, span=(3, 14), batch=1, seq=24):
    geo = geometry(lm)
    s = sample(geo, 5, batch, seq, span)
    sess = session(decoder_model(lm, plan))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, s.feeds))), s, sess


@pytest.mark.parametrize("tp, lengths", [
    (TokenPruning("fastv", 2, 0.5), [24, 24, 17, 17]), (TokenPruning("fastv", 1, 1.0), [24, 10, 10, 10]),
    (TokenPruning("fastv", 3, 0.0), [24] * 4), (TokenPruning("vtw", 0), [10] * 4), (TokenPruning("vtw", 4), [24] * 4),
])
def test_present_lengths_and_edge_settings(tp, lengths):
    lm = load_model("tiny-llava")
    plan = Plan(model=lm.info(), token_pruning=tp)
    got, _, _ = _prefill(plan, lm)
    assert [got[f"present.{i}.key"].shape[2] for i in range(4)] == lengths
    cmp = check_decoder(session(decoder_model(lm, plan)), lm, plan, geometry(lm), steps=1)
    assert cmp.max_abs_diff <= TOL, cmp.per_output


@pytest.mark.parametrize("span", [(0, 0), (0, 24), (5, 1)])
def test_edge_spans(span):
    lm = load_model("tiny-qwen2-vl")
    plan = plans(lm.info())["combined_fastv"]
    cmp = check_decoder(session(decoder_model(lm, plan)), lm, plan, geometry(lm), steps=1, span=span)
    assert cmp.max_abs_diff <= TOL, cmp.per_output


def test_batch_rows_rank_their_own_tokens():
    lm = load_model("tiny-qwen2.5-vl")
    plan = plans(lm.info())["combined_dynamic"]
    cmp = check_decoder(session(decoder_model(lm, plan)), lm, plan, geometry(lm), steps=2, batch=2)
    assert cmp.max_abs_diff <= TOL, cmp.per_output


def test_padding_after_the_span_prefill_and_decode():
    """A padded key after the visual span (batch row 1): the pruned layers' mask follows."""
    lm = load_model("tiny-internvl")
    plan = plans(lm.info())["combined_fastv"]
    geo = geometry(lm)
    sess = session(decoder_model(lm, plan))
    s = sample(geo, 7, 2, 24, (3, 14))
    s.feeds["attention_mask"][1, 20] = 0
    names = [o.name for o in sess.get_outputs()]
    for step in range(2):
        got = dict(zip(names, sess.run(None, s.feeds)))
        logits, present = reference_step(lm, plan, s)
        assert np.abs(got["logits"] - logits).max() <= TOL
        for i in range(4):
            assert np.abs(got[f"present.{i}.value"] - present[2 * i + 1]).max() <= TOL
        kv = [got[f"present.{i}.{t}"] for i in range(4) for t in ("key", "value")]
        mask = s.feeds["attention_mask"]
        s = sample(geo, 8, 2, 1, (0, 0), kv, 30, past_len=mask.shape[1])
        s.feeds["attention_mask"][:, :-1] = mask


def test_plugin_mode_equals_portable_and_fp16_is_close():
    lm = load_model("tiny-qwen2-vl")
    plan = plans(lm.info())["combined_fastv"]
    geo = geometry(lm)
    s = sample(geo, 0, 1, 24, (3, 14))
    a = session(decoder_model(lm, plan, "portable")).run(["logits"], s.feeds)[0]
    b = session(decoder_model(lm, plan, "plugin")).run(["logits"], s.feeds)[0]
    assert np.abs(a - b).max() <= 1e-5
    cmp = check_decoder(session(decoder_model(lm, plan, "portable", "fp16")), lm, plan, geo, steps=1,
                        dtype=np.float16)
    assert cmp.max_abs_diff <= 2e-2, cmp.per_output


def test_graph_structure_io_dims_and_last_row_score():
    lm = load_model("tiny-llava")
    model = decoder_model(lm, plans(lm.info())["combined_fastv"])  # FastV K=1: score layer 0
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]}
    assert dims["past_key_values.0.key"][2] == "past_sequence" and dims["present.0.key"][2] == "total_sequence"
    for i in (1, 2, 3):
        assert dims[f"past_key_values.{i}.value"][2] == PAST_DIM and dims[f"present.{i}.key"][2] == TOTAL_DIM
    score = [n.name for n in model.graph.node if "/fastv_score/" in n.name]
    assert score and all(n.startswith("/decoder/layers.0/attn/") for n in score)
    assert sum(n.op_type == "MatMul" for n in model.graph.node if "/fastv_score/" in n.name) == 1
    assert sum(n.op_type == "TopK" for n in model.graph.node) == 2  # rank + original order
    gathers = [n for n in model.graph.node if n.op_type == "GatherElements"]
    assert gathers and all("/token_pruning/" in n.name for n in gathers)


def test_bundle_manifest_records_pruning(tmp_path):
    lm = load_model("tiny-idefics3")
    plan = plans(lm.info())["combined_fastv"]
    out = bundle_from_plan(lm, plan, tmp_path / "b", ExportConfig(vision=False))
    man = json.loads((out / "manifest.json").read_text())
    tp = man["plan"]["token_pruning"]
    assert tp["method"] == "fastv" and tp["pruned_layers"] == [1, 2, 3] and tp["past_dim"] == PAST_DIM
    shapes = {io["name"]: io["shape"] for io in man["graphs"]["decoder"]["inputs"]}
    assert shapes["past_key_values.1.key"][2] == PAST_DIM and shapes["past_key_values.0.key"][2] == "past_sequence"
    assert man["verification"]["max_abs_diff"]["decoder"] <= TOL
    assert json.loads((out / "plan.json").read_text())["token_pruning"] == plan.token_pruning.to_json()
