"""The export edge: loaded model + plan -> bundle/ (DESIGN §5), atomic and deterministic.

Every file is written into a temporary folder beside the target, verified against the PyTorch
golden, hashed into manifest.json (:func:`rlens.runtime.manifest.write_manifest`, the one writer)
and only then committed by :func:`rlens.fileio.output_writer`: an interrupted or failed export
leaves nothing behind, and nothing but an earlier rlens bundle is ever replaced.
"""

from __future__ import annotations

import gc
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
from rlens.export.graph import WeightFile
from rlens.export.verify import compare_decoder, decoder_golden, span_for_plan
from rlens.export.vision import embed_model, reference_features, vision_model
from rlens.fileio import output_writer
from rlens.plan import Plan
from rlens.processing import apply_image_options
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
    # Weights are read where ONNX Runtime maps the .data file; no pre-packed second copy.
    opts.add_session_config_entry("session.disable_prepacking", "1")
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


def bundle_from_plan(loaded: Any, plan: Plan, out_dir: str | os.PathLike[str], config: ExportConfig, *,
                     consume: bool = False) -> Path:
    """Export ``loaded`` reduced by ``plan`` into the bundle folder ``out_dir``; returns its path.

    ``consume=True`` (the CLI's choice) hands the model over: its PyTorch weights are freed before
    ONNX Runtime verifies the decoder, so the export never holds two copies of them.

    Raises :class:`OutputError` if ``out_dir`` exists and is not replaceable (an rlens bundle with
    ``config.overwrite``), :class:`BundleError` if verification finds a graph off by more than the
    tolerance; nothing is left behind then.
    """
    plan.check_matches(loaded.info())
    plan = effective_plan(plan, config)
    source = [loaded.source] if loaded.preset is None else []
    with output_writer(out_dir, "bundle", config.overwrite, inputs=source) as tmp:
        try:
            write_bundle(loaded, plan, tmp, config, consume=consume)
        except OSError as e:
            raise OutputError(f"cannot write the bundle beside {out_dir}: {e.strerror or e}") from None
    return Path(os.path.abspath(out_dir))


def write_bundle(loaded: Any, plan: Plan, folder: Path, config: ExportConfig, *, consume: bool = False) -> None:
    """Write, verify and hash a bundle into ``folder``. Weights are streamed to the graphs' .data
    files as they are made; with ``consume`` the PyTorch model is dropped (``loaded.model = None``)
    once every golden is computed, before ONNX Runtime loads the decoder, so peak memory holds one
    copy of the weights, not two."""
    loaded.save_processor(folder / "processor")
    bounds = apply_image_options(loaded.family, folder / "processor", max_pixels=config.max_pixels,
                                 max_tiles=config.max_tiles, image_splitting=config.image_splitting)
    plan.save(folder / "plan.json")
    graphs: dict[str, Any] = {}
    diffs: dict[str, float] = {}
    geo = geometry(loaded)
    dt = np.float16 if config.dtype == "fp16" else np.float32
    spec = span_for_plan(plan, _max_positions(loaded.config))
    golden = decoder_golden(loaded, plan, geo, spec, dtype=dt) if config.verify else None
    with WeightFile(folder / "decoder.onnx.data") as weights:
        dec = decoder_model(loaded, plan, config.attention, config.dtype, config.opset, weights, config.resolved_ops)
    graphs["decoder"] = {"files": save_onnx(dec, folder / "decoder.onnx", config.external_data), **_io_table(dec)}
    del dec
    quantization = None
    if config.weights != "float":
        quantization = _quantize(folder, config, graphs, diffs, golden, geo, dt)
    with WeightFile(folder / "embed_tokens.onnx.data") as weights:
        emb = embed_model(loaded, config.opset, config.dtype, weights)
    graphs["embed_tokens"] = {"files": save_onnx(emb, folder / "embed_tokens.onnx", config.external_data),
                              **_io_table(emb)}
    del emb
    vision = None
    if config.vision:
        _vision_fp32(loaded)
        vision = _vision(loaded, folder, config, graphs, diffs, bounds)
    if config.verify:
        diffs["embed_tokens"] = _check_embed(loaded, folder / "embed_tokens.onnx")
    body = _manifest(loaded, plan, config, graphs, diffs, vision)
    body["weights"] = quantization or {"weights": "float"}
    if consume:
        loaded.model = None
        gc.collect()
    if golden is not None:
        if quantization is None:  # a quantized decoder's float graph was compared before quantizing
            diffs["decoder"] = compare_decoder(_session(folder / "decoder.onnx"), golden, geo, dtype=dt).max_abs_diff
        _enforce(diffs, config.max_abs_diff)
        body["verification"] = {"tolerance": config.max_abs_diff, "max_abs_diff": diffs,
                                "decoder_inputs": spec.manifest()}
    write_manifest(folder, body)


def _quantize(folder: Path, config: ExportConfig, graphs: dict[str, Any], diffs: dict[str, float],
              golden: Any, geo: Any, dt: Any) -> dict[str, Any]:
    """Verify the float decoder against ``golden`` (when given), quantize its weights in place, and
    record the quantized graph's logit difference from the float graph on a fixed sample."""
    from rlens.export.quantize import quantize_decoder
    from rlens.export.verify import sample

    path = folder / "decoder.onnx"
    feeds = sample(geo, 0, 1, 24, (3, 14), dtype=dt).feeds
    float_logits = None
    if golden is not None:
        diffs["decoder"] = compare_decoder(_session(path), golden, geo, dtype=dt).max_abs_diff
        float_logits = _session(path).run(["logits"], feeds)[0]
    model = onnx.load(str(path))
    for name in graphs["decoder"]["files"]:
        (folder / name).unlink()
    model, record = quantize_decoder(model, config.weights, config.resolved_ops, config.weights_block)
    graphs["decoder"]["files"] = save_onnx(model, path, config.external_data)
    del model
    if float_logits is not None:
        got = _session(path).run(["logits"], feeds)[0]
        record["logits_max_abs_diff_vs_float"] = float(np.max(np.abs(got.astype(np.float64) - float_logits)))
        record["greedy_token_agrees"] = bool(np.argmax(got[0, -1]) == np.argmax(float_logits[0, -1]))
        record["verified"] = "the float decoder, before quantization (verification.max_abs_diff.decoder)"
    return record


def _vision_fp32(loaded: Any) -> None:
    """vision.onnx is traced in fp32: a model loaded in fp16/bf16 gets every weight outside the
    language model and LM head (the vision tower and projector, a small part) cast to fp32."""
    import torch

    fam, model = loaded.family, loaded.model
    text = {id(t) for m in (fam.language_model(model), fam.lm_head(model)) for t in (*m.parameters(), *m.buffers())}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in text and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
        for name, buf in module.named_buffers(recurse=False):
            if id(buf) not in text and buf.dtype in (torch.float16, torch.bfloat16):
                setattr(module, name, buf.float())


def _max_positions(cfg: Any) -> int | None:
    max_pos = getattr(cfg.get_text_config(), "max_position_embeddings", None)
    return int(max_pos) if max_pos else None


def _json(x: Any) -> Any:
    return schema.to_json(x)


def sample_size(loaded: Any) -> tuple[int, int]:
    """(height, width) of the sample image the vision graph is traced with."""
    h, w = loaded.preset.image_size if loaded.preset is not None else (224, 224)
    return int(h), int(w)


def check_sizes(loaded: Any) -> list[tuple[int, int]]:
    """The traced size, then a wide and a tall image: vision.onnx is verified on all three. The tall
    one is 2.25 times the height, so grid-based families get an odd block count (Qwen2.5-VL: a
    partly filled window)."""
    h, w = sample_size(loaded)
    return [(h, w), (h, 2 * w), (2 * h + h // 4, w)]


def _vision(loaded: Any, folder: Path, config: ExportConfig, graphs: dict[str, Any],
            diffs: dict[str, float], bounds: dict[str, int]) -> dict[str, Any]:
    """Write vision.onnx (traced once, dynamic as the family declares), verify it at several image
    sizes against Hugging Face's ``get_image_features``; the manifest's ``vision`` entry."""
    from rlens.export.vision import vision_inputs
    from rlens.processing import Processor

    proc = Processor(folder / "processor", loaded.family, loaded.config)
    prepared = [proc.prepare(sample_image(size), "Describe the image.") for size in check_sizes(loaded)]
    vis = vision_model(loaded, vision_inputs(loaded, prepared[0].vision), config.opset)
    graphs["vision"] = {"files": save_onnx(vis, folder / "vision.onnx", config.external_data), **_io_table(vis)}
    if config.verify:
        diffs["vision"] = max(_check_vision(loaded, folder / "vision.onnx", p.vision) for p in prepared)
    params = loaded.family.vision_params(loaded.config)
    out = {"params": params, "bounds": bounds, "axes": loaded.family.vision_axes(params, bounds),
           "per_image": [p.visual_span[1] for p in prepared], "checked_sizes": [list(s) for s in check_sizes(loaded)]}
    if not config.image_splitting:
        out["image_splitting"] = False
    return out


def _check_vision(loaded: Any, path: Path, processed: dict[str, np.ndarray]) -> float:
    from rlens.export.vision import vision_inputs

    inputs = vision_inputs(loaded, processed)
    sess = _session(path)
    names = {i.name for i in sess.get_inputs()}
    got = sess.run(None, {k: v for k, v in inputs.items() if k in names})[0]
    want = reference_features(loaded, processed)
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
              vision: dict[str, Any] | None) -> dict[str, Any]:
    fam = loaded.family
    geo = geometry(loaded)
    cfg = loaded.config
    max_pos = _max_positions(cfg)
    body = {
        "format": FORMAT, "version": VERSION,
        "family": fam.name, "architecture": fam.model_class, "source": loaded.source,
        "dtype": config.dtype, "attention": config.attention, "opset": config.opset, "ops": config.resolved_ops,
        "model": {**fam.sizes(cfg), "rope_kind": fam.rope_kind,
                  "mrope_section": list(geo.mrope_section) if geo.mrope_section else None,
                  "max_position_embeddings": max_pos},
        "tokens": {"visual_token_ids": list(fam.visual_token_ids(cfg)),
                   "eos_token_id": _eos(cfg)},
        "vision": vision,
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
