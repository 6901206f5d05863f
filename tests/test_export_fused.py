"""``--ops ort`` (ONNX Runtime contrib ops) and ``--weights int8|int4``: structure and numbers.

The fused graph is held to the same golden as the standard one (the Hugging Face forward under
the reduced reference) and to the standard graph itself, fp32 within 1e-4.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
from helpers import ort_session as session
from helpers import reduction_plans as plans

from rlens.errors import InputError
from rlens.export import ExportConfig
from rlens.export.decoder import decoder_model, geometry
from rlens.export.quantize import quantize_decoder
from rlens.export.verify import check_decoder, sample
from rlens.models import load_model
from rlens.plan import LayerPlan, Plan, TokenPruning
from rlens.presets import PRESETS

TOL = 1e-4


@pytest.fixture(scope="module", params=list(PRESETS))
def loaded(request):
    return load_model(request.param)


def ops_of(model):
    return Counter(n.op_type for n in model.graph.node)


def outputs(model, geo, span=(3, 14), seq=24, batch=1):
    s = sample(geo, 0, batch, seq, span)
    sess = session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, s.feeds), strict=True))


@pytest.mark.parametrize("kind", ["none", "static", "dynamic"])
def test_fused_graph_matches_reference_and_standard(loaded, kind):
    plan = plans(loaded.info())[kind]
    geo = geometry(loaded)
    fused = decoder_model(loaded, plan, ops="ort")
    cmp = check_decoder(session(fused), loaded, plan, geo, steps=3)
    assert cmp.max_abs_diff <= TOL, cmp.per_output
    got, want = outputs(fused, geo), outputs(decoder_model(loaded, plan), geo)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= TOL


def test_fused_graph_uses_the_contrib_ops(loaded):
    n = loaded.info().num_layers
    plan = plans(loaded.info())["static"]
    unreduced = ops_of(decoder_model(loaded, Plan(model=loaded.info()), ops="ort"))
    assert unreduced["GroupQueryAttention"] == n and unreduced["RotaryEmbedding"] == 2 * n
    assert unreduced["SkipSimplifiedLayerNormalization"] == 2 * n and unreduced["SimplifiedLayerNormalization"] == 1
    assert unreduced["Softmax"] == 0 and unreduced["Where"] == 1  # the padding bias, built once
    reduced = ops_of(decoder_model(loaded, plan, ops="ort"))
    hollow = sum(lp.hollow_window is not None for lp in plan.layers)
    assert reduced["GroupQueryAttention"] == n - hollow and reduced["If"] == hollow
    standard = ops_of(decoder_model(loaded, plan))
    assert not {"GroupQueryAttention", "RotaryEmbedding", "SkipSimplifiedLayerNormalization"} & set(standard)


def test_hollow_blocks_run_group_query_attention():
    """The visual blocks of a hollow layer are one GroupQueryAttention per block (inside Scan)."""
    lm = load_model("tiny-llava")
    model = decoder_model(lm, Plan(model=lm.info(), layers=(LayerPlan(1, hollow_window=4),)), ops="ort")
    (iff,) = [n for n in model.graph.node if n.op_type == "If"]
    then = next(a.g for a in iff.attribute if a.name == "then_branch")
    (scan,) = [n for n in then.node if n.op_type == "Scan"]
    assert [n.op_type for n in scan.attribute[0].g.node] == ["GroupQueryAttention"]
    orelse = next(a.g for a in iff.attribute if a.name == "else_branch")
    (gqa,) = [n for n in orelse.node if n.op_type == "GroupQueryAttention"]
    # Decode copies the cache once: the layer's present is the else branch's GQA present (no Concat
    # of the past outside the If), and the then branch concatenates only when there is a span.
    assert not [n for n in model.graph.node if n.op_type == "Concat" and any("past_key" in x for x in n.input)]
    fed = {n.input[0]: n.output[0] for n in orelse.node if n.op_type == "Identity"}
    assert [fed.get(x) for x in gqa.output[1:]] == [o.name for o in orelse.output[1:]]
    assert all(f"present.1.{t}" in {n.output[0] for n in model.graph.node if n.input and n.input[0] in iff.output}
               for t in ("key", "value"))


def test_fused_hollow_attention_really_skips_work():
    """GroupQueryAttention + text-row FLOPs from the ORT profile: text rows x all keys, visual blocks
    of c queries x (prefix + Lp + c) keys, against the unreduced fused graph's causal GQA."""
    from rlens.export.fused import block_rows
    from rlens.export.profile import gqa_flops

    text, visual, window = 16, 256, 16
    lm = load_model("tiny-llava")
    info, geo = lm.info(), geometry(lm)
    feeds = sample(geo, 0, 1, visual + 2 * text, (text, visual)).feeds
    hollow = Plan(model=info, layers=tuple(LayerPlan(i, hollow_window=window) for i in range(info.num_layers)))
    ratio = gqa_flops(decoder_model(lm, hollow, ops="ort"), feeds) / gqa_flops(
        decoder_model(lm, Plan(model=info), ops="ort"), feeds)
    s, (c, lp) = visual + 2 * text, block_rows(window)
    expected = ((s - visual) * s + visual * (text + lp + c)) / (s * s)
    assert ratio == pytest.approx(expected, rel=0.01)
    assert ratio < 0.25


@pytest.mark.parametrize("window,rows", [(256, (64, 256)), (5, (2, 8)), (3, (1, 3)), (1, (1, 1)), (7, (2, 8))])
def test_visual_block_rows(window, rows):
    """Blocks of ceil(W/4) queries whose past holds 4 blocks >= W keys (fewer blocks for tiny W)."""
    from rlens.export.fused import block_rows

    c, lp = block_rows(window)
    assert (c, lp) == rows and lp >= window and lp % c == 0


@pytest.mark.parametrize("span", [(0, 24), (5, 1), (0, 0), (2, 9), (1, 20)])
def test_fused_hollow_edge_spans(span):
    lm = load_model("tiny-qwen2-vl")
    plan = plans(lm.info())["static"]
    cmp = check_decoder(session(decoder_model(lm, plan, ops="ort")), lm, plan, geometry(lm), steps=1, span=span)
    assert cmp.max_abs_diff <= TOL, cmp.per_output


def test_fused_batch_of_two_and_window_wider_than_span():
    lm = load_model("tiny-qwen2.5-vl")
    info = lm.info()
    for plan in (plans(info)["static"], Plan(model=info, layers=(LayerPlan(0, hollow_window=64),))):
        cmp = check_decoder(session(decoder_model(lm, plan, ops="ort")), lm, plan, geometry(lm), steps=1, batch=2)
        assert cmp.max_abs_diff <= TOL, cmp.per_output


def test_fused_padding_mask_matches_standard():
    """A left-padded row: the attention bias masks the padding keys as the standard graph does."""
    lm = load_model("tiny-llava")
    geo = geometry(lm)
    plan = plans(lm.info())["static"]
    s = sample(geo, 1, 2, 24, (6, 10))
    s.feeds["attention_mask"][1, :4] = 0
    got = session(decoder_model(lm, plan, ops="ort")).run(["logits"], s.feeds)[0]
    want = session(decoder_model(lm, plan)).run(["logits"], s.feeds)[0]
    assert np.abs(got - want).max() <= TOL


def test_fused_with_token_pruning_keeps_standard_ops_from_the_score_layer():
    lm = load_model("tiny-qwen2-vl")
    info = lm.info()
    plan = Plan(model=info, token_pruning=TokenPruning("fastv", 3, 0.5),
                layers=(LayerPlan(0, hollow_window=4),))
    model = decoder_model(lm, plan, ops="ort")
    assert ops_of(model)["GroupQueryAttention"] == 1  # layer 1: 0 is hollow, the score layer 2 and on standard
    cmp = check_decoder(session(model), lm, plan, geometry(lm), steps=2)
    assert cmp.max_abs_diff <= TOL, cmp.per_output


def test_fp16_fused_graph_is_close():
    lm = load_model("tiny-llava")
    plan = plans(lm.info())["static"]
    cmp = check_decoder(session(decoder_model(lm, plan, dtype="fp16", ops="ort")), lm, plan, geometry(lm),
                        steps=1, dtype=np.float16)
    assert cmp.max_abs_diff <= 5e-2, cmp.per_output


@pytest.mark.parametrize("ops,opset,op", [("ort", 18, "MatMulNBits"), ("standard", 21, "DequantizeLinear")])
@pytest.mark.parametrize("weights,ratio", [("int4", 0.2), ("int8", 0.3)])
def test_quantized_weights_are_smaller_and_close(ops, opset, op, weights, ratio):
    lm = load_model("tiny-llava")
    geo = geometry(lm)
    plan = plans(lm.info())["static"]
    float_model = decoder_model(lm, plan, ops=ops, opset=opset)
    want = outputs(float_model, geo)["logits"]
    model, record = quantize_decoder(decoder_model(lm, plan, ops=ops, opset=opset), weights, ops)
    assert ops_of(model)[op] == record["matmuls"] > 0
    assert ops_of(model)["MatMul"] == ops_of(float_model)["MatMul"] - (0 if op == "DequantizeLinear" else record["matmuls"])
    assert record["weight_bytes"] < ratio * record["float_weight_bytes"]
    got = outputs(model, geo)["logits"]
    assert 0 < np.abs(got - want).max() < (0.1 if weights == "int8" else 1.0)


def test_dynamic_ffn_weights_stay_float():
    """A dynamic FFN gathers rows of its weights at run time: those MatMuls are not quantized."""
    lm = load_model("tiny-llava")
    plan = plans(lm.info())["dynamic"]
    model, record = quantize_decoder(decoder_model(lm, plan, ops="ort"), "int4", "ort")
    n = lm.info().num_layers
    assert record["matmuls"] == 2 * n + 1  # qkv, o per layer, lm_head
    assert outputs(model, geometry(lm))["logits"].shape[-1] == geometry(lm).vocab


def test_config_errors():
    assert ExportConfig().resolved_ops == "ort"
    assert ExportConfig(attention="plugin").resolved_ops == "standard"
    with pytest.raises(InputError, match="--ops standard"):
        ExportConfig(attention="plugin", ops="ort")
    with pytest.raises(InputError, match="opset 21"):
        ExportConfig(ops="standard", weights="int4")
    with pytest.raises(InputError, match="--weights"):
        ExportConfig(weights="int2")
    ExportConfig(ops="standard", weights="int4", opset=21)


def test_bundle_records_ops_and_build_engine_refuses_ort_ops(tmp_path):
    import json

    from rlens.engine import EngineConfig, engine_from_bundle
    from rlens.errors import BundleError
    from rlens.export import bundle_from_plan

    lm = load_model("tiny-llava")
    bundle = bundle_from_plan(lm, Plan(model=lm.info()), tmp_path / "b", ExportConfig(verify=False, vision=False))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["ops"] == "ort" and manifest["weights"] == {"weights": "float"}
    with pytest.raises(BundleError, match="--ops standard"):
        engine_from_bundle(bundle, EngineConfig())
