"""The export edge: loaded model + plan -> bundle/ (DESIGN §5), atomic and deterministic.

Every file is written into a temporary folder beside the target, verified against the PyTorch
golden, hashed into manifest.json (:func:`rlens.runtime.manifest.write_manifest`, the one writer)
and only then committed by :func:`rlens.fileio.output_writer`: an interrupted or failed export
leaves nothing behind, and nothing but an earlier rlens bundle is ever replaced.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rlens import schema
from rlens.errors import BundleError, OutputError
from rlens.export.bundle import ExportConfig, effective_plan, save_onnx
from rlens.export.decoder import decoder_model, geometry
from rlens.export.tokens import manifest_entry
from rlens.export.verify import check_decoder
from rlens.export.vision import embed_model, reference_features, vision_inputs, vision_model
from rlens.fileio import output_writer
from rlens.plan import Plan
from rlens.runtime.manifest import FORMAT, VERSION, write_manifest


def sample_image(size: tuple[int, int] = (112, 112)) -> Any:
    """A fixed, deterministic RGB test pattern (height, width)."""
    from PIL import Image

    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), ((x + y) * 7) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _io_table(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def rows(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": dims})
        return out

    return {"inputs": rows(model.graph.input), "outputs": rows(model.graph.output)}


def bundle_from_plan(loaded: Any, plan: Plan, out_dir: str | os.PathLike[str], config: ExportConfig) -> Path:
    """Export ``loaded`` reduced by ``plan`` into the bundle folder ``out_dir``; returns its path.

    Raises :class:`OutputError` if ``out_dir`` exists and is not replaceable (an rlens bundle with
    ``config.overwrite``), :class:`BundleError` if verification finds a graph off by more than the
    tolerance; nothing is left behind then.
    """
    plan.check_matches(loaded.info())
    plan = effective_plan(plan, config)
    source = [loaded.source] if loaded.preset is None else []
    with output_writer(out_dir, "bundle", config.overwrite, inputs=source) as tmp:
        try:
            write_bundle(loaded, plan, tmp, config)
        except OSError as e:
            raise OutputError(f"cannot write the bundle beside {out_dir}: {e.strerror or e}") from None
    return Path(os.path.abspath(out_dir))


def write_bundle(loaded: Any, plan: Plan, folder: Path, config: ExportConfig) -> None:
    loaded.save_processor(folder / "processor")
    plan.save(folder / "plan.json")
    graphs: dict[str, Any] = {}
    diffs: dict[str, float] = {}
    dec = decoder_model(loaded, plan, config.attention, config.dtype, config.opset)
    graphs["decoder"] = {"files": save_onnx(dec, folder / "decoder.onnx", config.external_data), **_io_table(dec)}
    del dec
    emb = embed_model(loaded, config.opset, config.dtype)
    graphs["embed_tokens"] = {"files": save_onnx(emb, folder / "embed_tokens.onnx", config.external_data),
                              **_io_table(emb)}
    visual_tokens = image_size = None
    if config.vision:
        image_size = sample_size(loaded)
        prepared = _prepare_sample(loaded, folder / "processor")
        visual_tokens = prepared.visual_span[1]
        inputs = vision_inputs(prepared.vision)
        vis = vision_model(loaded, inputs, config.opset)
        graphs["vision"] = {"files": save_onnx(vis, folder / "vision.onnx", config.external_data), **_io_table(vis)}
        if config.verify:
            diffs["vision"] = _check_vision(loaded, folder / "vision.onnx", inputs)
    if config.verify:
        geo = geometry(loaded)
        dt = np.float16 if config.dtype == "fp16" else np.float32
        diffs["decoder"] = check_decoder(_session(folder / "decoder.onnx"), loaded, plan, geo, dtype=dt).max_abs_diff
        diffs["embed_tokens"] = _check_embed(loaded, folder / "embed_tokens.onnx")
        _enforce(diffs, config.max_abs_diff)
    write_manifest(folder, _manifest(loaded, plan, config, graphs, diffs, visual_tokens, image_size))


def _json(x: Any) -> Any:
    return schema.to_json(x)


def sample_size(loaded: Any) -> tuple[int, int]:
    """(height, width) of the sample image the vision graph is traced with."""
    h, w = loaded.preset.image_size if loaded.preset is not None else (224, 224)
    return int(h), int(w)


def _prepare_sample(loaded: Any, processor_dir: Path) -> Any:
    from rlens.processing import Processor

    size = sample_size(loaded)
    return Processor(processor_dir, loaded.family, loaded.config).prepare(sample_image(size), "Describe the image.")


def _check_vision(loaded: Any, path: Path, inputs: dict[str, np.ndarray]) -> float:
    sess = _session(path)
    names = {i.name for i in sess.get_inputs()}
    got = sess.run(None, {k: v for k, v in inputs.items() if k in names})[0]
    want = reference_features(loaded, inputs)
    if got.shape != want.shape:
        raise BundleError(f"vision.onnx gives features {got.shape}, the model {want.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - want)))


def _check_embed(loaded: Any, path: Path) -> float:
    ids = np.arange(min(64, loaded.family.sizes(loaded.config)["vocab_size"]), dtype=np.int64)[None]
    got = _session(path).run(None, {"input_ids": ids})[0]
    table = loaded.family.language_model(loaded.model).embed_tokens.weight.detach().float().numpy()
    return float(np.max(np.abs(got.astype(np.float64) - table[ids])))


def _enforce(diffs: dict[str, float], tolerance: float) -> None:
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        detail = ", ".join(f"{k} max abs diff {v:.3g}" for k, v in sorted(bad.items()))
        raise BundleError(f"verification failed ({detail} > tolerance {tolerance:g}); no bundle was written")


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    import rlens

    return {"rlens": rlens.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _manifest(loaded: Any, plan: Plan, config: ExportConfig, graphs: dict[str, Any], diffs: dict[str, float],
              visual_tokens: int | None, image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    fam = loaded.family
    geo = geometry(loaded)
    cfg = loaded.config
    max_pos = getattr(cfg.get_text_config(), "max_position_embeddings", None)
    body = {
        "format": FORMAT, "version": VERSION,
        "family": fam.name, "architecture": fam.model_class, "source": loaded.source,
        "dtype": config.dtype, "attention": config.attention, "opset": config.opset,
        "model": {**fam.sizes(cfg), "rope_kind": fam.rope_kind,
                  "mrope_section": list(geo.mrope_section) if geo.mrope_section else None,
                  "max_position_embeddings": int(max_pos) if max_pos else None},
        "tokens": {"visual_token_ids": list(fam.visual_token_ids(cfg)),
                   "eos_token_id": _eos(cfg)},
        "visual_tokens": {"per_image": visual_tokens, "rule": f"{fam.name}: Family.visual_tokens_from_pixels",
                          "image_size": list(image_size) if image_size else None},
        "graphs": graphs,
        "plan": {"summary": plan.summary(), "ffn_mode": plan.ffn_mode, "ffn_probes": plan.ffn_probes,
                 "hollow_layers": [lp.index for lp in plan.layers if lp.hollow_window is not None],
                 "ffn_layers": [lp.index for lp in plan.layers if lp.ffn_keep is not None],
                 "flops": dict(plan.flops),
                 "token_pruning": None if plan.token_pruning is None
                 else manifest_entry(plan.token_pruning, geo.num_layers)},
        "verification": None if not config.verify else {"tolerance": config.max_abs_diff, "max_abs_diff": diffs},
        "versions": _versions(),
    }
    return _json(body)


def _eos(cfg: Any) -> Any:
    text = cfg.get_text_config()
    return getattr(text, "eos_token_id", None) or getattr(cfg, "eos_token_id", None)
