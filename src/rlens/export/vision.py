"""vision.onnx (vision tower + projector/merger) and embed_tokens.onnx.

The vision graph is traced from the family's vision module (by default the model's own
``get_image_features``, so it is exactly the Hugging Face vision path) with torch.onnx: the
TorchScript exporter first, the dynamo exporter when that one produces a graph ONNX Runtime
rejects. Inputs are the feeds the family declares (``Family.vision_feeds``, numpy, shared with the runtime); the axes the
family declares dynamic (Qwen2-VL's patch count, InternVL's tile count) stay dynamic, so one graph
takes every image size within the processor's bounds (docs/bundle.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import helper

from rlens.errors import ModelError
from rlens.export.graph import GraphBuilder

SKIP_INPUTS = ("num_patches",)


def vision_inputs(loaded: Any, processed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The vision graph's feeds for one processed image (the family's rule, as the runtime does)."""
    return dict(loaded.family.vision_feeds(processed, loaded.family.vision_params(loaded.config)))


def reference_features(loaded: Any, processed: dict[str, np.ndarray]) -> np.ndarray:
    """Hugging Face's own ``get_image_features`` on the image processor's output (the golden)."""
    import torch

    from rlens.families.base import image_features_module

    hf = {k: v for k, v in processed.items() if k not in SKIP_INPUTS}
    mod = image_features_module(loaded.model, list(hf))
    with torch.no_grad():
        return mod(*(torch.from_numpy(np.asarray(v)) for v in hf.values())).float().numpy()


def vision_model(loaded: Any, inputs: dict[str, np.ndarray], opset: int) -> onnx.ModelProto:
    """Trace the vision path on ``inputs``; raise :class:`ModelError` if no exporter manages."""
    errors = []
    for dynamo in (name == "dynamo" for name in loaded.family.vision_exporters):
        try:
            model = _trace(loaded, inputs, opset, dynamo)
            _check_runs(model, inputs)
            return model
        except Exception as e:  # noqa: BLE001 - try the next exporter, report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: {str(e)[:300]}")
    raise ModelError(f"{loaded.family.name}: the vision tower could not be exported to ONNX ({'; '.join(errors)})")


def _trace(loaded: Any, inputs: dict[str, np.ndarray], opset: int, dynamo: bool) -> onnx.ModelProto:
    import torch

    keys = list(inputs)
    mod = loaded.family.vision_module(loaded.model, keys)
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    axes = {k: v for k, v in loaded.family.vision_dynamic_axes.items() if k in inputs}
    buf = io.BytesIO()
    # torch.onnx's dynamo path prints progress on stdout: keep rlens' stdout for its own output.
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        if dynamo:
            kw: dict[str, Any] = {"dynamo": True, "verbose": False, "dynamic_shapes": _dynamic_shapes(keys, axes)}
        else:
            kw = {"dynamo": False, "opset_version": opset, "dynamic_axes": {**axes, "image_features": {0: "visual"}}}
        out = torch.onnx.export(mod, args, buf if not dynamo else None, input_names=keys,
                                output_names=["image_features"], **kw)
    if dynamo:
        model = out.model_proto
    else:
        model = onnx.load_from_string(buf.getvalue())
    model.producer_name, model.producer_version = "rlens", "1"
    return model


def _dynamic_shapes(keys: list[str], axes: dict[str, dict[int, str]]) -> Any:
    if not axes:
        return None
    from torch.export import Dim

    return tuple({i: Dim.AUTO for i in axes[k]} if k in axes else None for k in keys)


@contextlib.contextmanager
def _quiet(name: str) -> Any:
    """Raise a logger's level inside the block only (restored after)."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _check_runs(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    sess.run(None, {k: v for k, v in inputs.items() if k in names})


def embed_model(loaded: Any, opset: int, dtype: str = "fp32", weights: Any = None) -> onnx.ModelProto:
    """input_ids [B, S] int64 -> inputs_embeds [B, S, H] (a Gather of the embedding table);
    ``weights``: a :class:`rlens.export.graph.WeightFile` to stream the table to."""
    from rlens.export.decoder import finish_model

    table = loaded.family.language_model(loaded.model).embed_tokens.weight.detach().float().numpy()
    b = GraphBuilder("embed_tokens", dtype, weights)
    out = b.op("Gather", [b.weight("embed_tokens.weight", table, b.np_float), "input_ids"], axis=0)
    b.output(out, "inputs_embeds")
    graph = helper.make_graph(
        b.nodes, "rlens_embed_tokens",
        [helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("inputs_embeds", b.onnx_float, ["batch", "sequence", table.shape[1]])],
        b.initializers)
    return finish_model(graph, opset)
