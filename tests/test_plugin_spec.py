"""The HollowAttention spec: the C++ sources cannot drift from it, its helpers validate, and its
numpy reference agrees with an independent per-query formulation of DESIGN.md §3.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import rlens.plugins as plugins
from rlens.errors import RlensError
from rlens.plugins.spec import (
    FIELD_NAMES,
    HOLLOW_ATTENTION,
    PluginSpecError,
    make_node_attributes,
    markdown_table,
    reference_hollow_attention,
)

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "plugins" / "hollow_attention"


def _cpp_string_constant(text: str, name: str) -> str:
    match = re.search(rf'constexpr\s+char\s+{name}\[\]\s*=\s*"([^"]*)"\s*;', text)
    assert match, f"{name} not found"
    return match.group(1)


def _cpp_array(text: str, name: str) -> list[str]:
    match = re.search(rf"{name}\[\]\s*=\s*\{{([^}}]*)\}}", text)
    assert match, f"{name}[] not found"
    return [item.strip() for item in match.group(1).split(",") if item.strip()]


def test_cpp_name_version_namespace_match_spec():
    header = (PLUGIN_DIR / "hollow_attention_plugin.h").read_text()
    assert _cpp_string_constant(header, "kPLUGIN_NAME") == HOLLOW_ATTENTION.name
    assert _cpp_string_constant(header, "kPLUGIN_VERSION") == HOLLOW_ATTENTION.version
    assert _cpp_string_constant(header, "kPLUGIN_NAMESPACE") == HOLLOW_ATTENTION.namespace


def test_cpp_creator_fields_match_spec():
    source = (PLUGIN_DIR / "hollow_attention_plugin.cpp").read_text()
    names = [n.strip('"') for n in _cpp_array(source, "kFIELD_NAMES")]
    types = [t.rsplit("::", 1)[-1] for t in _cpp_array(source, "kFIELD_TYPES")]
    assert tuple(names) == FIELD_NAMES
    assert types == [a.field_type for a in HOLLOW_ATTENTION.attributes if a.plugin_field]
    assert re.search(r"kNB_FIELDS\s*=\s*(\d+)", source).group(1) == str(len(FIELD_NAMES))
    # the creator hands out exactly these fields and the plugin serializes exactly these fields
    assert "makeFields(nullptr)" in source and "makeFields(&mParams)" in source


def test_cpp_io_dtypes_match_spec():
    source = (PLUGIN_DIR / "hollow_attention_plugin.cpp").read_text()
    span = next(t for t in HOLLOW_ATTENTION.inputs if t.name == "visual_span")
    assert span.dtypes == ("int64",)
    assert re.search(r"pos == kSPAN\)\s*\{\s*return desc\.type == DataType::kINT64;", source)
    assert [t.name for t in HOLLOW_ATTENTION.inputs] == ["q", "k", "v", "visual_span"]
    kernel_h = (PLUGIN_DIR / "hollow_attention_kernel.h").read_text()
    assert f"RLENS_HOLLOW_MAX_HEAD_DIM {HOLLOW_ATTENTION.max_head_dim}" in kernel_h


def test_make_node_attributes():
    """The node DESIGN.md §5.1 specifies, written out (not read back from the spec): attributes
    plugin_namespace="rlens", plugin_version="1", window, num_heads, num_kv_heads, head_dim, scale,
    with ONNX-serializable Python types (int attributes ints, the scale a float)."""
    attrs = make_node_attributes(window=256, num_heads=28, num_kv_heads=4, head_dim=128, scale=128**-0.5)
    assert attrs == {"plugin_namespace": "rlens", "plugin_version": "1", "window": 256, "num_heads": 28,
                     "num_kv_heads": 4, "head_dim": 128, "scale": 128**-0.5}
    assert [type(attrs[k]) for k in ("window", "num_heads", "num_kv_heads", "head_dim", "scale")] == [int] * 4 + [float]
    node = onnx.helper.make_node("HollowAttention", ["q", "k", "v", "visual_span"], ["out"], domain="rlens", **attrs)
    got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert got["plugin_namespace"] == b"rlens" and got["plugin_version"] == b"1" and got["window"] == 256
    assert [a.type for a in node.attribute if a.name == "scale"] == [onnx.AttributeProto.FLOAT]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(window=0, num_heads=4, num_kv_heads=2, head_dim=64, scale=0.125),
        dict(window=8, num_heads=6, num_kv_heads=4, head_dim=64, scale=0.125),
        dict(window=8, num_heads=4, num_kv_heads=2, head_dim=512, scale=0.125),
        dict(window=8, num_heads=4, num_kv_heads=2, head_dim=64, scale=float("nan")),
        dict(window=8.5, num_heads=4, num_kv_heads=2, head_dim=64, scale=0.125),
    ],
)
def test_make_node_attributes_rejects_bad_values(kwargs):
    with pytest.raises(PluginSpecError):
        make_node_attributes(**kwargs)
    assert issubclass(PluginSpecError, ValueError)


def test_markdown_table_lists_everything():
    table = markdown_table()
    for name in [t.name for t in HOLLOW_ATTENTION.inputs + HOLLOW_ATTENTION.outputs] + list(FIELD_NAMES):
        assert f"`{name}`" in table
    assert "`plugin_namespace`" in table and "HollowAttention" in table


def test_docs_carry_the_current_table():
    doc = REPO / "docs" / "plugin.md"
    assert markdown_table() in doc.read_text(), "regenerate the table in docs/plugin.md from markdown_table()"


def per_query_loop(q, k, v, span, window, scale):
    """Independent formulation: for each query, gather the allowed key indices, then softmax."""
    batch, heads, q_len, _ = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    past = kv_len - q_len
    visual = set(range(past + span[0], past + span[0] + span[1]))
    out = np.zeros(q.shape)
    for i in range(q_len):
        qa = past + i
        if qa in visual:
            keys = [j for j in range(qa + 1) if j not in visual or qa - j < window]
        else:
            keys = list(range(qa + 1))
        for b in range(batch):
            for h in range(heads):
                kh = h // (heads // kv_heads)
                s = np.array([float(np.dot(q[b, h, i], k[b, kh, j])) * scale for j in keys])
                p = np.exp(s - s.max())
                out[b, h, i] = (p / p.sum()) @ v[b, kh, keys]
    return out


@pytest.mark.parametrize(
    "shape,span,window",
    [
        ((2, 4, 2, 11, 0, 8), (3, 6), 2),  # batch, heads, kv_heads, q_len, past, head_dim
        ((1, 2, 2, 9, 5, 4), (0, 9), 3),
        ((1, 6, 1, 12, 3, 4), (4, 8), 1),
        ((1, 2, 1, 7, 2, 4), (0, 0), 4),
        ((1, 2, 2, 10, 0, 4), (2, 5), 100),
    ],
)
def test_reference_matches_per_query_loop(shape, span, window):
    batch, heads, kv_heads, q_len, past, dim = shape
    rng = np.random.default_rng(7)
    q = rng.standard_normal((batch, heads, q_len, dim))
    k = rng.standard_normal((batch, kv_heads, past + q_len, dim))
    v = rng.standard_normal((batch, kv_heads, past + q_len, dim))
    got = reference_hollow_attention(q, k, v, np.array(span, dtype=np.int64), window, 0.7)
    np.testing.assert_allclose(got, per_query_loop(q, k, v, span, window, 0.7), atol=1e-12)


def test_window_covering_span_is_plain_causal_attention():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 10, 4))
    k = rng.standard_normal((1, 2, 13, 4))
    v = rng.standard_normal((1, 2, 13, 4))
    hollow = reference_hollow_attention(q, k, v, (2, 6), 6, 0.5)
    causal = reference_hollow_attention(q, k, v, (0, 0), 1, 0.5)
    np.testing.assert_allclose(hollow, causal, atol=1e-12)
    assert not np.allclose(reference_hollow_attention(q, k, v, (2, 6), 5, 0.5), causal)


@pytest.mark.parametrize("span", [(-1, 2), (3, 8), (0, 11)])
def test_reference_rejects_spans_outside_the_chunk(span):
    q = np.zeros((1, 1, 10, 2))
    with pytest.raises(PluginSpecError):
        reference_hollow_attention(q, q, q, span, 2, 1.0)


def test_import_has_no_heavy_dependencies():
    code = (
        "import sys, rlens.plugins, rlens.plugins.spec; "
        "bad = [m for m in ('torch', 'tensorrt', 'onnx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_library_path_explains_how_to_build(monkeypatch, tmp_path):
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    monkeypatch.setattr(plugins, "_REPO_ROOT", tmp_path)
    monkeypatch.setattr(plugins, "_PACKAGE_DIR", tmp_path / "pkg")
    with pytest.raises(FileNotFoundError) as info:
        plugins.library_path()
    assert isinstance(info.value, plugins.PluginNotBuiltError)
    assert "cmake -S" in str(info.value) and plugins.ENV_VAR in str(info.value)


def test_library_path_search_order(monkeypatch, tmp_path):
    monkeypatch.setattr(plugins, "_REPO_ROOT", tmp_path)
    monkeypatch.setattr(plugins, "_PACKAGE_DIR", tmp_path / "pkg")
    build = tmp_path / "build" / "plugins"
    build.mkdir(parents=True)
    (build / plugins.LIBRARY_NAME).write_bytes(b"")
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    assert plugins.library_path() == build / plugins.LIBRARY_NAME
    custom = tmp_path / "custom.so"
    custom.write_bytes(b"")
    monkeypatch.setenv(plugins.ENV_VAR, str(custom))
    assert plugins.library_path() == custom


def test_register_with_loads_once_per_process_and_raises_on_failure(monkeypatch, tmp_path):
    lib = tmp_path / plugins.LIBRARY_NAME
    lib.write_bytes(b"")
    monkeypatch.setenv(plugins.ENV_VAR, str(lib))

    class FakeRegistry:
        def __init__(self, handle, creator=True):
            self.handle, self.creator, self.paths = handle, creator, []

        def load_library(self, path):
            self.paths.append(path)
            return self.handle

        def get_creator(self, name, version, namespace):
            assert (name, version, namespace) == ("HollowAttention", "1", "rlens")
            return object() if self.creator else None

    registry = FakeRegistry(handle=object())
    assert plugins.register_with(registry) is registry.handle
    assert plugins.register_with(registry, lib) is registry.handle  # engine build, then the runtime
    assert registry.paths == [str(lib)], "loaded once per process"
    with pytest.raises(RlensError, match="could not load"):
        plugins.register_with(FakeRegistry(handle=None))
    with pytest.raises(RlensError, match="no rlens::HollowAttention"):
        plugins.register_with(FakeRegistry(handle=object(), creator=False))
    with pytest.raises(plugins.PluginNotBuiltError):
        plugins.register_with(FakeRegistry(handle=object()), tmp_path / "absent.so")
