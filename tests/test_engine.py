"""build-engine: the CPU-checkable parts (ONNX preparation, profiles, target checks, errors) and the
GPU tests (engine build, plugin vs ONNX Runtime), which skip with a reason without TensorRT + GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from rlens.targets import Target, check_engine_record
from rlens.engine.prepare import onnx_for_tensorrt
from rlens.engine.profiles import decoder_profiles, vision_profile
from rlens.errors import BundleError, InputError
from rlens.plugins.spec import HOLLOW_ATTENTION

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.fixture(scope="module")
def plugin_bundle(tmp_path_factory):
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import LayerPlan, Plan

    loaded = load_model("tiny-qwen2-vl")
    plan = Plan(model=loaded.info(), layers=(LayerPlan(1, hollow_window=4), LayerPlan(3, hollow_window=4)))
    out = tmp_path_factory.mktemp("b") / "bundle"
    return bundle_from_plan(loaded, plan, out, ExportConfig(attention="plugin", verify=False))


def test_plugin_function_is_stripped_and_nodes_kept(plugin_bundle, tmp_path):
    before = sorted(p.name for p in plugin_bundle.iterdir())
    prepared = onnx_for_tensorrt(plugin_bundle / "decoder.onnx")
    assert prepared.plugin_nodes == 2 and prepared.path == plugin_bundle / "decoder.onnx"
    assert sorted(p.name for p in plugin_bundle.iterdir()) == before, "nothing is written"
    model = onnx.load_from_string(prepared.model_bytes)
    assert not any(f.name == HOLLOW_ATTENTION.name for f in model.functions)
    nodes = [n for n in model.graph.node if n.op_type == HOLLOW_ATTENTION.name]
    assert len(nodes) == 2 and all(n.domain == HOLLOW_ATTENTION.onnx_domain for n in nodes)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["plugin_namespace"] == b"rlens" and attrs["plugin_version"] == b"1" and attrs["window"] == 4
    original = onnx.load(str(plugin_bundle / "decoder.onnx"))
    assert any(f.name == HOLLOW_ATTENTION.name for f in original.functions), "the bundle itself keeps the body"
    # the bytes parse to the same graph once the external data are resolved next to the bundle's file
    (tmp_path / "decoder.onnx").write_bytes(prepared.model_bytes)
    for f in plugin_bundle.glob("decoder.onnx*.data"):
        (tmp_path / f.name).symlink_to(f)
    onnx.checker.check_model(str(tmp_path / "decoder.onnx"))


def test_prepare_above_2gib_reads_no_weights_and_writes_nothing(tmp_path):
    """A 3 GiB decoder (sparse external data file: no disk or memory used): the prepared graph is
    a few hundred bytes and points at the bundle's data file; ByteSize() is never involved."""
    from onnx import TensorProto, helper

    size = 3 * 2**30 // 4
    data = tmp_path / "decoder.onnx.data"
    with open(data, "wb") as f:
        f.truncate(size * 4)
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[size])
    weight.data_location = TensorProto.EXTERNAL
    for k, v in {"location": data.name, "offset": "0", "length": str(size * 4)}.items():
        weight.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])], [weight])
    (tmp_path / "decoder.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    prepared = onnx_for_tensorrt(tmp_path / "decoder.onnx")
    assert prepared.external_bytes == size * 4 > 2**31
    assert len(prepared.model_bytes) < 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "decoder.onnx.data"]
    init = onnx.load_from_string(prepared.model_bytes).graph.initializer[0]
    assert {e.key: e.value for e in init.external_data}["location"] == data.name


def test_unreadable_onnx_is_a_bundle_error(tmp_path):
    (tmp_path / "decoder.onnx").write_bytes(b"not a protobuf \xff\xff")
    with pytest.raises(BundleError, match="cannot read"):
        onnx_for_tensorrt(tmp_path / "decoder.onnx")


def test_embed_profile_opt_never_exceeds_max(plugin_bundle):
    from rlens.engine.build import EngineConfig, _profiles

    manifest = json.loads((plugin_bundle / "manifest.json").read_text())
    for max_seq, max_visual in ((2048, 1024), (300, 290), (70, 60)):
        profiles = _profiles(manifest, EngineConfig(max_visual_tokens=max_visual, max_seq=max_seq))
        for p in [q for qs in profiles.values() for q in qs]:
            for name, (lo, opt, hi) in p.shapes.items():
                assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (p.name, name, lo, opt, hi)


def test_tensorrt_below_10_3_is_refused_with_the_jetpack_fact():
    from rlens.engine.build import TensorRTUnavailable, check_tensorrt_version

    for ok in ("10.3.0.30", "10.16.0.1", "11.1.0"):
        check_tensorrt_version(ok)
    for bad in ("8.6.2.3", "10.2.0", "9.3.0"):
        with pytest.raises(TensorRTUnavailable, match="JetPack 6.0 ships TensorRT 8.6"):
            check_tensorrt_version(bad)


def test_jetson_is_identified_without_nvidia_smi(tmp_path):
    from rlens.targets import _from_jetson_device_tree

    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert _from_jetson_device_tree(str(model)) == ("NVIDIA Jetson AGX Orin Developer Kit", "8.7")
    model.write_bytes(b"Raspberry Pi 5\x00")
    assert _from_jetson_device_tree(str(model)) is None
    assert _from_jetson_device_tree(str(tmp_path / "absent")) is None


def test_decoder_profiles_cover_every_input(plugin_bundle):
    manifest = json.loads((plugin_bundle / "manifest.json").read_text())
    prefill, decode = decoder_profiles(manifest, max_seq=512, max_visual=256)
    names = {io["name"] for io in manifest["graphs"]["decoder"]["inputs"]}
    assert set(prefill.shapes) == names == set(decode.shapes)
    assert prefill.shapes["past_key_values.0.key"][2][2] == 0  # prefill: no past
    assert prefill.shapes["position_ids"][2] == (3, 1, 512)  # M-RoPE rows
    assert decode.shapes["inputs_embeds"][2][1] == 1 and decode.shapes["past_key_values.0.key"][2][2] == 511
    assert decode.shapes["attention_mask"][2] == (1, 512)
    # patches within the processor's min/max pixels (56*56 .. 224*224 -> 4 .. 256 patches of 14x14)
    lo, _, hi = vision_profile(manifest).shapes["pixel_values"]
    assert lo == (4, 1176) and hi == (256, 1176)
    with pytest.raises(InputError):
        decoder_profiles(manifest, max_seq=100, max_visual=100)


def test_engine_for_another_gpu_or_version_is_refused():
    here = Target("NVIDIA Jetson AGX Orin", "8.7", "10.3.0.30")
    check_engine_record(here.to_json(), here, "decoder")
    with pytest.raises(BundleError, match="built with TensorRT 10.16.0.1"):
        check_engine_record(dict(here.to_json(), tensorrt="10.16.0.1"), here, "decoder")
    with pytest.raises(BundleError, match="built for NVIDIA H100"):
        check_engine_record(dict(here.to_json(), gpu="NVIDIA H100", compute_capability="9.0"), here, "decoder")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: the missing-TensorRT message is not reachable")
def test_build_engine_without_tensorrt_is_one_clear_error(plugin_bundle):
    r = subprocess.run([sys.executable, "-m", "rlens.cli.main", "build-engine", str(plugin_bundle)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "TensorRT is not importable" in r.stderr and "Traceback" not in r.stderr
    assert not (plugin_bundle / "engines").exists()


needs_trt_gpu = pytest.mark.skipif(not (HAVE_TRT and _has_gpu()),
                                   reason="needs TensorRT and a CUDA GPU (none in this workplace)")


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt_gpu
@pytest.mark.parametrize("attention", ["portable", "plugin"])
def test_decoder_engine_matches_onnxruntime(tmp_path, attention):
    """Build the decoder engine (plugin from build/plugins) and compare a prefill with ONNX Runtime:
    fp32 within 1e-4."""
    import onnxruntime as ort
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from rlens.engine import EngineConfig, engine_from_bundle
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import LayerPlan, Plan

    loaded = load_model("tiny-llava")
    plan = Plan(model=loaded.info(), layers=(LayerPlan(2, hollow_window=4),))
    bundle = bundle_from_plan(loaded, plan, tmp_path / "b", ExportConfig(attention=attention, ops="standard"))
    engine_from_bundle(bundle, EngineConfig(max_visual_tokens=32, max_seq=128, graphs=("decoder",)))
    feeds = _prefill_feeds(json.loads((bundle / "manifest.json").read_text()), seq=40, span=(6, 16))
    want = ort.InferenceSession(str(bundle / "decoder.onnx")).run(["logits"], feeds)[0]
    with TrtRunner(EngineFromBytes((bundle / "engines" / "decoder.plan").read_bytes())) as runner:
        got = runner.infer(feeds)["logits"]
    np.testing.assert_allclose(got, want, atol=1e-4)


def _prefill_feeds(manifest, seq, span):
    m = manifest["model"]
    rng = np.random.default_rng(0)
    feeds = {"inputs_embeds": rng.standard_normal((1, seq, m["hidden_size"]), dtype=np.float32),
             "attention_mask": np.ones((1, seq), np.int64),
             "position_ids": np.arange(seq, dtype=np.int64)[None],
             "visual_span": np.asarray(span, np.int64)}
    for i in range(m["num_layers"]):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, m["num_kv_heads"], 0, m["head_dim"]), np.float32)
    return feeds


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt_gpu
def test_tensorrt_backend_generates_the_onnxruntime_tokens(tmp_path):
    """The runtime's tensorrt backend (engines of build-engine) gives the greedy tokens of the
    onnxruntime backend on a reduced plugin-mode bundle."""
    from helpers import sample_image

    from rlens.engine import EngineConfig, engine_from_bundle
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import LayerPlan, Plan
    from rlens.runtime import Session

    loaded = load_model("tiny-qwen2-vl")
    plan = Plan(model=loaded.info(), layers=(LayerPlan(1, hollow_window=4), LayerPlan(3, hollow_window=4)))
    bundle = bundle_from_plan(loaded, plan, tmp_path / "b", ExportConfig(attention="plugin"))
    engine_from_bundle(bundle, EngineConfig(max_visual_tokens=32, max_seq=256))
    texts = []
    for backend in ("onnxruntime", "tensorrt"):
        with Session.from_bundle(bundle, backend=backend) as s:
            texts.append(s.generate(sample_image(), "What is in the image?", max_new_tokens=8))
    assert texts[0] == texts[1]


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt_gpu
def test_hollow_prefill_is_faster_than_full_on_tensorrt(tmp_path):
    """Prefill latency of a plugin-mode bundle with every layer hollow (W=64) against the unreduced
    bundle, 1024 visual tokens, measured alternately in one process: the hollow engine must be faster."""
    import time

    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from rlens.engine import EngineConfig, engine_from_bundle
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import LayerPlan, Plan, empty_plan

    loaded = load_model("tiny-llava")
    info = loaded.info()
    plans = {"full": empty_plan(info),
             "hollow": Plan(model=info, layers=tuple(LayerPlan(i, hollow_window=64) for i in range(info.num_layers)))}
    runners, feeds = {}, None
    for name, plan in plans.items():
        b = bundle_from_plan(loaded, plan, tmp_path / name, ExportConfig(attention="plugin", verify=False))
        engine_from_bundle(b, EngineConfig(max_visual_tokens=1024, max_seq=1200, graphs=("decoder",)))
        feeds = _prefill_feeds(json.loads((b / "manifest.json").read_text()), seq=1100, span=(16, 1024))
        runners[name] = TrtRunner(EngineFromBytes((b / "engines" / "decoder.plan").read_bytes()))
    times = {name: [] for name in runners}
    for r in runners.values():
        r.activate()
    try:
        for _ in range(20):
            for name, r in runners.items():
                t = time.perf_counter()
                r.infer(feeds)
                times[name].append(time.perf_counter() - t)
    finally:
        for r in runners.values():
            r.deactivate()
    assert np.median(times["hollow"]) < np.median(times["full"])


def test_visual_span_has_value_bounds_for_tensorrt_shape_tensors(plugin_bundle):
    manifest = json.loads((plugin_bundle / "manifest.json").read_text())
    prefill, decode = decoder_profiles(manifest, max_seq=512, max_visual=256)
    lo, opt, hi = prefill.values["visual_span"]
    assert lo == (0, 0) and opt[1] == 256 and hi == (512, 512)
    assert decode.values["visual_span"] == ((0, 0), (0, 0), (0, 0))


def test_trtexec_graph_uses_the_plugin_and_the_bundle_weights(plugin_bundle):
    """python -m rlens.engine.trtexec writes decoder.trt.onnx beside decoder.onnx: no function body
    (trtexec would inline it and silently skip the plugin), no weights, same external data."""
    r = subprocess.run([sys.executable, "-m", "rlens.engine.trtexec", str(plugin_bundle / "decoder.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dst = plugin_bundle / "decoder.trt.onnx"
    assert r.stdout.strip() == str(dst)
    model = onnx.load(str(dst))  # loads the external data from the bundle's own file
    assert not model.functions and sum(n.op_type == HOLLOW_ATTENTION.name for n in model.graph.node) == 2
    assert dst.stat().st_size < (plugin_bundle / "decoder.onnx").stat().st_size + 1
    dst.unlink()
    bad = subprocess.run([sys.executable, "-m", "rlens.engine.trtexec", str(plugin_bundle / "nope.onnx")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
