"""vision.onnx (vision tower + projector/merger) and embed_tokens.onnx.

The vision graph is traced from the family's own ``get_image_features`` (so it is exactly the
Hugging Face vision path) with torch.onnx: the TorchScript exporter first, the dynamo exporter
when that one produces a graph ONNX Runtime rejects. Input names are the image processor's
output names that the traced graph uses (Qwen2-VL's ``image_grid_thw`` is folded into the graph:
the bundle's processor resizes every image to one fixed size, docs/bundle.md).
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

from rlens import hf_compat
from rlens.errors import ModelError
from rlens.export.graph import GraphBuilder

SKIP_INPUTS = ("num_patches",)


class _ImageFeatures:
    """Factory of the traced module (torch is imported lazily)."""

    @staticmethod
    def module(model: Any, keys: list[str]) -> Any:
        import torch

        class ImageFeatures(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                out = hf_compat.image_features(self.model, **dict(zip(keys, args)))
                feats = getattr(out, "pooler_output", out)
                if isinstance(feats, (list, tuple)):
                    feats = torch.cat(list(feats), 0)
                return feats.reshape(-1, feats.shape[-1])

        return ImageFeatures().eval()


def vision_inputs(prepared_vision: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in prepared_vision.items() if k not in SKIP_INPUTS}


def reference_features(loaded: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    mod = _ImageFeatures.module(loaded.model, list(inputs))
    with torch.no_grad():
        return mod(*(torch.from_numpy(v) for v in inputs.values())).numpy()


def vision_model(loaded: Any, inputs: dict[str, np.ndarray], opset: int) -> onnx.ModelProto:
    """Trace the vision path on ``inputs``; raise :class:`ModelError` if no exporter manages."""
    errors = []
    for dynamo in (False, True):
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
    mod = _ImageFeatures.module(loaded.model, keys)
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    buf = io.BytesIO()
    # torch.onnx's dynamo path prints progress on stdout: keep rlens' stdout for its own output.
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        kw = {"dynamo": True, "verbose": False} if dynamo else {"dynamo": False, "opset_version": opset}
        out = torch.onnx.export(mod, args, buf if not dynamo else None, input_names=keys,
                                output_names=["image_features"], **kw)
    if dynamo:
        model = out.model_proto
    else:
        model = onnx.load_from_string(buf.getvalue())
    model.producer_name, model.producer_version = "rlens", "1"
    return model


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
