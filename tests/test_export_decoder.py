"""decoder.onnx vs the Hugging Face model (no plan) and vs the PyTorch reference (plans), fp32."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from helpers import ort_session as session
from helpers import reduction_plans as plans

from rlens.export.decoder import decoder_model, geometry
from rlens.export.verify import check_decoder, sample
from rlens.models import load_model
from rlens.plan import LayerPlan, Plan
from rlens.plugins.spec import HOLLOW_ATTENTION, make_node_attributes
from rlens.presets import PRESETS

TOL = 1e-4


@pytest.fixture(scope="module", params=list(PRESETS))
def loaded(request):
    return load_model(request.param)


def last_logits(sess, geo):
    s = sample(geo, 0, 1, 24, (3, 14))
    return sess.run(["logits"], s.feeds)[0]


@pytest.mark.parametrize("kind", ["none", "static", "dynamic"])
def test_decoder_matches_reference_prefill_and_3_decode_steps(loaded, kind):
    plan = plans(loaded.info())[kind]
    geo = geometry(loaded)
    cmp = check_decoder(session(decoder_model(loaded, plan)), loaded, plan, geo, steps=3)
    print(loaded.source, kind, json.dumps(cmp.per_output))
    assert cmp.max_abs_diff <= TOL, cmp.per_output
    assert {"prefill.logits", "decode.logits", "decode.present.key"} <= set(cmp.per_output)


def test_reductions_change_the_output(loaded):
    """The plans above really reduce (else the comparisons would be vacuous)."""
    geo = geometry(loaded)
    ps = plans(loaded.info())
    base = last_logits(session(decoder_model(loaded, ps["none"])), geo)
    for kind in ("static", "dynamic"):
        red = last_logits(session(decoder_model(loaded, ps[kind])), geo)
        assert np.abs(red - base).max() > 1e-3, kind


def test_batch_of_two_matches_reference():
    lm = load_model("tiny-qwen2.5-vl")
    plan = plans(lm.info())["dynamic"]
    cmp = check_decoder(session(decoder_model(lm, plan)), lm, plan, geometry(lm), steps=1, batch=2)
    assert cmp.max_abs_diff <= TOL


@pytest.mark.parametrize("span", [(0, 24), (5, 1), (0, 0), (2, 9)])
def test_hollow_edge_spans(span):
    lm = load_model("tiny-llava")
    plan = plans(lm.info())["static"]
    cmp = check_decoder(session(decoder_model(lm, plan)), lm, plan, geometry(lm), steps=1, span=span)
    assert cmp.max_abs_diff <= TOL


def test_window_at_least_span_is_plain_attention():
    lm = load_model("tiny-internvl")
    info = lm.info()
    geo = geometry(lm)
    wide = Plan(model=info, layers=tuple(LayerPlan(i, hollow_window=14) for i in range(info.num_layers)))
    a = last_logits(session(decoder_model(lm, wide)), geo)
    b = last_logits(session(decoder_model(lm, Plan(model=info))), geo)
    assert np.abs(a - b).max() <= 1e-5


def test_plugin_mode_equals_portable():
    lm = load_model("tiny-qwen2-vl")
    plan = plans(lm.info())["dynamic"]
    geo = geometry(lm)
    plug = decoder_model(lm, plan, "plugin")
    nodes = [n for n in plug.graph.node if n.op_type == HOLLOW_ATTENTION.name]
    assert len(nodes) == geo.num_layers and all(n.domain == "rlens" for n in nodes)
    assert [f.name for f in plug.functions] == [HOLLOW_ATTENTION.name]
    attrs = {a.name: (a.s.decode() if a.type == a.STRING else a.i if a.type == a.INT else a.f) for a in nodes[0].attribute}
    want = make_node_attributes(3, geo.heads, geo.kv_heads, geo.head_dim, geo.head_dim ** -0.5)
    assert attrs.keys() == want.keys() and all(attrs[k] == pytest.approx(v) for k, v in want.items())
    a = last_logits(session(plug), geo)
    b = last_logits(session(decoder_model(lm, plan, "portable")), geo)
    assert np.abs(a - b).max() <= 1e-6
    assert check_decoder(session(plug), lm, plan, geo, steps=1).max_abs_diff <= TOL


def all_nodes(graph):
    """Every node, If branches included."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == a.GRAPH:
                yield from all_nodes(a.g)


def test_node_names_are_hierarchical_and_unique():
    lm = load_model("tiny-llava")
    model = decoder_model(lm, plans(lm.info())["static"])
    names = [n.name for n in all_nodes(model.graph)]
    assert len(set(names)) == len(names)
    assert any(n.startswith("/decoder/layers.0/attn/HollowAttention/visual_if/then/visual/") for n in names)
    assert any(n.startswith("/decoder/layers.3/mlp/") for n in names)
    assert all(n.startswith("/decoder/") for n in names)


def weight_bytes(model):
    """Bytes of the model's weights (initializers other than the small shared constants)."""
    return sum(len(t.raw_data) for t in model.graph.initializer if not t.name.startswith("const_"))


def test_static_ffn_weights_do_not_grow():
    lm = load_model("tiny-idefics3")
    ps = plans(lm.info())
    full, red = decoder_model(lm, ps["none"]), decoder_model(lm, ps["static"])
    assert weight_bytes(red) == weight_bytes(full)
    names = {t.name for t in red.graph.initializer}
    assert "layers.0.mlp.gate_proj.kept.weight_t" in names and "layers.0.mlp.gate_proj.rest.weight_t" in names
    assert "layers.0.mlp.gate_proj.weight_t" not in names
    weights = {t.name for t in red.graph.initializer if not t.name.startswith("const_")}
    readers = {n.op_type for n in all_nodes(red.graph) if weights & set(n.input)}
    assert "MatMul" in readers and readers <= {"MatMul", "Mul", "Add"}, readers  # no Slice/Gather of a weight
    consumers = [i for n in all_nodes(red.graph) for i in n.input if i in weights]
    assert len(consumers) == len(set(consumers))  # each weight read once (one prepacked copy in ORT)


def test_decode_step_runs_no_visual_branch():
    """Decode steps (visual_span (0, 0)) take the else branches: no block or probe ops run."""
    lm = load_model("tiny-qwen2-vl")
    for kind in ("static", "dynamic"):
        model = decoder_model(lm, plans(lm.info())[kind])
        ifs = [n for n in model.graph.node if n.op_type == "If"]
        assert ifs and all("/visual_if" in n.name for n in ifs)
        for n in ifs:
            other = {a.name: a.g for a in n.attribute}["else_branch"]
            ops = {m.op_type for m in all_nodes(other)}
            assert not ops & {"TopK", "Pad", "Split", "GatherElements"}, (n.name, ops)
        main = [m for m in model.graph.node]
        assert not {m.op_type for m in main} & {"TopK", "Split", "GatherElements"}
        assert not [m.name for m in main if "/visual/" in m.name or "/probe/" in m.name]


def test_hollow_attention_really_skips_work():
    """Attention MatMul FLOPs from the ORT profile: text rows x all keys + visual x (prefix + 2W)."""
    from rlens.export.profile import attention_matmul_flops

    text, visual, window = 16, 256, 16
    lm = load_model("tiny-llava")
    info, geo = lm.info(), geometry(lm)
    feeds = sample(geo, 0, 1, visual + 2 * text, (text, visual)).feeds
    hollow = Plan(model=info, layers=tuple(LayerPlan(i, hollow_window=window) for i in range(info.num_layers)))
    ratio = attention_matmul_flops(decoder_model(lm, hollow), feeds) / attention_matmul_flops(
        decoder_model(lm, Plan(model=info)), feeds)
    s = visual + 2 * text
    expected = ((s - visual) * s + visual * (text + 2 * window)) / (s * s)
    assert ratio == pytest.approx(expected, rel=0.01)
    assert ratio < 0.3


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_fp16_graph_is_typed_and_close(kind):
    from onnx import TensorProto

    lm = load_model("tiny-qwen2-vl")
    plan = plans(lm.info())[kind]
    model = decoder_model(lm, plan, "portable", "fp16")
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types["inputs_embeds"] == TensorProto.FLOAT16 and types["present.0.key"] == TensorProto.FLOAT16
    assert types["logits"] == TensorProto.FLOAT
    big = [t for t in model.graph.initializer if t.name.endswith("weight_t")]
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big)
    cmp = check_decoder(session(model), lm, plan, geometry(lm), steps=1, dtype=np.float16)
    if kind == "static":
        assert cmp.max_abs_diff <= 2e-2, cmp.per_output
    else:  # fp16 probe scores can flip near-tied TopK picks vs the fp32 golden
        assert cmp.per_output["prefill.logits"] <= 0.1 and cmp.per_output["decode.logits"] <= 2e-2, cmp.per_output
