"""bundle_from_plan: files, manifest, vision vs HF, verification, atomicity, determinism."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from rlens.errors import BundleError, InputError, OutputError
from rlens.export import ExportConfig, bundle_from_plan
from rlens.models import load_model
from rlens.plan import LayerPlan, Plan
from rlens.presets import PRESETS


def static_plan(info):
    return Plan(model=info, layers=(LayerPlan(0, hollow_window=4, ffn_keep=32, ffn_indices=tuple(range(0, 64, 2))),
                                    LayerPlan(2, hollow_window=3, ffn_keep=48, ffn_indices=tuple(range(48)))))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_bundle_every_preset(tmp_path, preset):
    lm = load_model(preset)
    out = bundle_from_plan(lm, static_plan(lm.info()), tmp_path / "bundle", ExportConfig())
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "rlens.bundle" and m["version"] == 2 and m["digest"].startswith("sha256:")
    diffs = m["verification"]["max_abs_diff"]
    print(preset, diffs)
    assert set(diffs) == {"vision", "decoder", "embed_tokens"}
    assert all(v <= 1e-4 for v in diffs.values())
    for name in ("decoder.onnx", "vision.onnx", "embed_tokens.onnx", "plan.json", "processor/tokenizer.json"):
        assert name in m["files"] and (out / name).is_file()
    dec = {i["name"]: i for i in m["graphs"]["decoder"]["inputs"]}
    assert dec["position_ids"]["shape"][0] == (3 if lm.family.rope_kind == "mrope" else "batch")
    assert [o["name"] for o in m["graphs"]["decoder"]["outputs"]][:2] == ["logits", "present.0.key"]
    assert list(tmp_path.iterdir()) == [out]  # no temporary folder left
    assert m["vision"]["checked_sizes"][0] == [int(x) for x in lm.preset.image_size]  # the traced sample size
    want = lm.config.get_text_config().max_position_embeddings
    assert isinstance(m["model"]["max_position_embeddings"], int) and m["model"]["max_position_embeddings"] == want


@pytest.mark.slow
def test_two_exports_are_byte_identical(tmp_path):
    lm = load_model("tiny-idefics3")  # its vision tower needs the dynamo exporter
    plan = static_plan(lm.info())
    cfg = ExportConfig(verify=False)
    a = json.loads((bundle_from_plan(lm, plan, tmp_path / "a", cfg) / "manifest.json").read_text())
    b = json.loads((bundle_from_plan(load_model("tiny-idefics3"), plan, tmp_path / "b", cfg) / "manifest.json").read_text())
    assert a["files"] == b["files"]


def test_existing_bundle_refused_unless_overwrite(tmp_path):
    lm = load_model("tiny-llava")
    plan = Plan(model=lm.info())
    cfg = ExportConfig(verify=False, vision=False)
    bundle_from_plan(lm, plan, tmp_path / "b", cfg)
    with pytest.raises(OutputError, match="already exists"):
        bundle_from_plan(lm, plan, tmp_path / "b", cfg)
    bundle_from_plan(lm, plan, tmp_path / "b", ExportConfig(verify=False, vision=False, overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_failed_verification_leaves_nothing(tmp_path):
    lm = load_model("tiny-llava")
    with pytest.raises(BundleError, match="verification failed"):
        bundle_from_plan(lm, static_plan(lm.info()), tmp_path / "b", ExportConfig(tolerance=1e-12, vision=False))
    assert list(tmp_path.iterdir()) == []


def test_external_data(tmp_path):
    lm = load_model("tiny-internvl")
    out = bundle_from_plan(lm, static_plan(lm.info()), tmp_path / "b",
                           ExportConfig(external_data=True, vision=False))
    assert (out / "decoder.onnx.data").stat().st_size > (out / "decoder.onnx").stat().st_size
    assert "decoder.onnx.data" in json.loads((out / "manifest.json").read_text())["files"]
    ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])


def test_reduced_bundle_weights_do_not_grow(tmp_path):
    lm = load_model("tiny-qwen2-vl")
    cfg = ExportConfig(verify=False, vision=False)
    full = bundle_from_plan(lm, Plan(model=lm.info()), tmp_path / "full", cfg)
    red = bundle_from_plan(lm, static_plan(lm.info()), tmp_path / "red", cfg)
    import onnx

    def weights(folder):
        model = onnx.load(str(folder / "decoder.onnx"))
        # every weight (all initializers but the small shared constants ``const_*``), inline or external
        return sum(len(t.raw_data) or int(dict((e.key, e.value) for e in t.external_data).get("length", 0))
                   for t in model.graph.initializer if not t.name.startswith("const_"))

    a, b = weights(full), weights(red)
    print("decoder weight bytes: unreduced", a, "reduced", b,
          "| file bytes", (full / "decoder.onnx").stat().st_size, (red / "decoder.onnx").stat().st_size)
    assert a == b


def test_dynamic_override_and_plugin_bundle(tmp_path):
    lm = load_model("tiny-qwen2.5-vl")
    out = bundle_from_plan(lm, static_plan(lm.info()), tmp_path / "b",
                           ExportConfig(ffn_mode="dynamic", attention="plugin", vision=False))
    m = json.loads((out / "manifest.json").read_text())
    assert m["plan"]["ffn_mode"] == "dynamic" and m["attention"] == "plugin"
    assert m["verification"]["max_abs_diff"]["decoder"] <= 1e-4


@pytest.mark.parametrize("kw", [{"attention": "x"}, {"dtype": "int8"}, {"ffn_mode": "y"}, {"opset": 9}])
def test_bad_config(kw):
    with pytest.raises(InputError):
        ExportConfig(**kw)


def test_static_override_without_indices_is_an_error(tmp_path):
    lm = load_model("tiny-llava")
    plan = Plan(model=lm.info(), ffn_mode="dynamic", layers=(LayerPlan(0, ffn_keep=32),))
    with pytest.raises(InputError, match="ffn_indices"):
        bundle_from_plan(lm, plan, tmp_path / "b", ExportConfig(ffn_mode="static"))
    assert not np.any([p.exists() for p in tmp_path.iterdir()])
