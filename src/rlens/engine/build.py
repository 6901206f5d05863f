"""``engine_from_bundle``: strongly typed TensorRT engines for a bundle's graphs, built with
polygraphy's loaders, written atomically to ``bundle/engines/`` and recorded in the manifest.

Memory: no ONNX copy is written and no weight is loaded by Python (engine/prepare.py); the
parser reads the weights from the bundle's external data, the builder holds them plus its
tactic workspace, and the engine is serialized once (``build_serialized_network``) and written
from those bytes -- never deserialized and serialized again.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from rlens.attention_modes import needs_plugin
from rlens.configs import EngineConfig
from rlens.targets import current_target
from rlens.engine.prepare import PreparedOnnx, onnx_for_tensorrt
from rlens.engine.profiles import ProfileShapes, decoder_profiles, vision_profile
from rlens.errors import BundleError, RlensError
from rlens.runtime.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)


MIN_TENSORRT = (10, 3)


class TensorRTUnavailable(RlensError):
    """TensorRT (or polygraphy) is not importable here."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: F401
        import polygraphy.backend.trt  # noqa: F401
    except ImportError as e:
        raise TensorRTUnavailable(
            f"TensorRT is not importable ({e}); install it on the target: pip install 'redundancylens[tensorrt]' "
            "on x86, JetPack's python3-libnvinfer on Jetson (docs/jetson.md)") from None
    check_tensorrt_version(trt.__version__)
    return trt


def check_tensorrt_version(version: str) -> None:
    """TensorRT < 10.3 (JetPack 6.0 ships 8.6) has no IPluginV3 / strongly typed ONNX path."""
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    if len(parts) < 2 or tuple(parts) < MIN_TENSORRT:
        raise TensorRTUnavailable(
            f"TensorRT {version} is not supported: rlens needs TensorRT >= 10.3 (JetPack 6.1/6.2 or 7.x; "
            "JetPack 6.0 ships TensorRT 8.6, upgrade to JetPack 6.1+; docs/jetson.md)")


def engine_from_bundle(bundle: str | os.PathLike[str], config: EngineConfig) -> dict[str, Any]:
    """Build every graph's engine; return the manifest's new ``engines`` record."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle, check_hashes=True).raw
    if manifest.get("ops", "standard") != "standard":
        raise BundleError(f"{bundle} was exported with --ops {manifest['ops']} (ONNX Runtime contrib ops), which "
                          "TensorRT does not parse; export it again with --ops standard")
    trt = import_tensorrt()
    if needs_plugin(manifest.get("attention")):
        _load_plugin(trt, config.plugin_lib)
    target = current_target()
    profiles = _profiles(manifest, config)
    records = {}
    with tempfile.TemporaryDirectory(dir=bundle.resolve().parent, prefix=f".{bundle.name}.engines.tmp-") as tmp:
        for graph in config.graphs:
            if graph not in manifest["graphs"]:
                continue
            prepared = onnx_for_tensorrt(bundle / manifest["graphs"][graph]["files"][0])
            engine_path = Path(tmp) / f"{graph}.plan"
            _build_one(trt, prepared, profiles[graph], engine_path, config)
            records[graph] = {"file": f"engines/{graph}.plan", "profiles": [p.name for p in profiles[graph]],
                              **target.to_json()}
            log.info("built engine %s (%.1f MB)", graph, engine_path.stat().st_size / 1e6)
        _commit(bundle, Path(tmp), records)
    write_manifest(bundle, {**manifest, "engines": records})
    return records


def _profiles(manifest: dict[str, Any], config: EngineConfig) -> dict[str, list[ProfileShapes]]:
    embed_io = manifest["graphs"]["embed_tokens"]["inputs"][0]
    opt = min(config.max_visual_tokens + 64, config.max_seq)  # opt <= max (TensorRT rejects it otherwise)
    embed = ProfileShapes("embed", {embed_io["name"]: ((1, 1), (1, opt), (1, config.max_seq))})
    out = {"decoder": decoder_profiles(manifest, config.max_seq, config.max_visual_tokens), "embed_tokens": [embed]}
    if "vision" in manifest["graphs"]:
        out["vision"] = [vision_profile(manifest)]
    return out


def _load_plugin(trt: Any, plugin_lib: str | None) -> None:
    from rlens import plugins

    plugins.register_with(trt.get_plugin_registry(), plugin_lib)


def network_from_prepared(trt: Any, prepared: PreparedOnnx) -> tuple[Any, Any, Any]:
    """(builder, strongly typed network, parser) parsed from the prepared bytes; external data are
    read from the bundle (``parse(bytes, path)``), so nothing is copied."""
    from polygraphy.backend.trt import get_trt_logger

    builder = trt.Builder(get_trt_logger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, get_trt_logger())
    if not parser.parse(prepared.model_bytes, str(prepared.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT could not parse {prepared.path.name}: {errors}")
    return builder, network, parser


def _build_one(trt: Any, prepared: PreparedOnnx, profiles: list[ProfileShapes], out: Path,
               config: EngineConfig) -> None:
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network

    network = network_from_prepared(trt, prepared)
    inputs = [network[1].get_input(i) for i in range(network[1].num_inputs)]
    shape_tensors = {t.name for t in inputs if t.is_shape_tensor}
    trt_profiles = []
    for p in profiles:
        prof = Profile()
        for name, (lo, opt, hi) in p.shapes.items():
            if name in shape_tensors:  # bounds on the values, not the dims
                if not p.values or name not in p.values:
                    raise BundleError(f"TensorRT treats {name} as a shape tensor and rlens has no value bounds for it")
                lo, opt, hi = p.values[name]
            prof.add(name, min=lo, opt=opt, max=hi)
        trt_profiles.append(prof)
    create = CreateConfig(
        profiles=trt_profiles,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: config.workspace_mb << 20},
        load_timing_cache=config.timing_cache if config.timing_cache and Path(config.timing_cache).is_file() else None,
    )
    engine_bytes = engine_bytes_from_network(network, config=create, save_timing_cache=config.timing_cache)
    if engine_bytes is None:
        raise BundleError(f"TensorRT could not build an engine for {prepared.path.name}; see its log above")
    with open(out, "wb") as f:  # the one serialized copy, written as it is
        f.write(engine_bytes)
    del engine_bytes, network


def _commit(bundle: Path, tmp: Path, records: dict[str, Any]) -> None:
    """Move the engines into bundle/engines/ (the caller then rewrites the manifest, hashing them)."""
    engines = bundle / "engines"
    engines.mkdir(exist_ok=True)
    for graph in records:
        os.replace(tmp / f"{graph}.plan", engines / f"{graph}.plan")
