"""Export options and ONNX file writing (a leaf of rlens.export: the writer imports it, never back).

``bundle_from_plan`` (rlens.export.writer) builds the bundle in a temporary folder beside the
target and commits it through :func:`rlens.fileio.output_writer`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx

from rlens.configs import ExportConfig
from rlens.errors import BundleError, InputError
from rlens.plan import Plan

EXTERNAL_DATA_LIMIT = 2**31 - 2**26  # protobuf's 2 GiB, with headroom for the graph itself
# Weights over this stay in <name>.data by default: a graph streamed to external data is read back
# inline only when small (reading back and serializing holds it ~3 times over).
INLINE_LIMIT = 2**28


def effective_plan(plan: Plan, config: ExportConfig) -> Plan:
    """The plan with ``config.ffn_mode`` applied (static needs the plan's calibrated indices)."""
    mode = config.ffn_mode or plan.ffn_mode
    if mode == plan.ffn_mode:
        return plan
    if mode == "static":
        missing = [lp.index for lp in plan.layers if lp.ffn_keep is not None and lp.ffn_indices is None]
        if missing:
            raise InputError(f"--ffn-mode static needs calibrated ffn_indices; the plan has none for layers {missing}")
        return replace(plan, ffn_mode="static")
    layers = tuple(replace(lp, ffn_indices=None) for lp in plan.layers)
    return replace(plan, ffn_mode="dynamic", layers=layers)


def save_onnx(model: onnx.ModelProto, path: Path, external: bool | None,
              limit: int = INLINE_LIMIT) -> list[str]:
    """Write ``model`` to ``path``; returns the file names written.

    Weights go to ``<name>.data`` when ``external`` is true, or when ``external`` is None and the
    tensors' sizes add up to more than ``limit`` (decided from the tensor sizes: the model is never
    serialized to measure it; inline is refused over protobuf's 2 GiB). Tensors already streamed to
    ``<name>.data`` by a :class:`~rlens.export.graph.WeightFile` stay there, or are read back when
    inline is chosen.
    """
    from rlens.export.graph import all_tensors, tensor_bytes

    location = path.name + ".data"
    data = path.with_name(location)
    streamed = _external_locations(model)
    if streamed - {location}:
        raise BundleError(f"{path.name}: external tensors point at {sorted(streamed)}, expected {location}")
    size = tensor_bytes(model)
    if external is None:
        external = size > limit
    if not external and size > EXTERNAL_DATA_LIMIT:
        raise BundleError(f"{path.name} has {size / 2**30:.2f} GiB of weights, over protobuf's 2 GiB limit for a "
                          "single file; export with external data (the default)")
    if not streamed and data.is_file() and data.stat().st_size == 0:
        data.unlink()  # the empty file of a WeightFile nothing was streamed to
    if external and not streamed:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024, convert_attribute=False)
    elif not external and streamed:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
        data.unlink()
        for t in all_tensors(model):  # as if built inline: same bytes
            t.ClearField("data_location")
    if external and not streamed:
        return [path.name, location]
    path.write_bytes(model.SerializeToString(deterministic=True))
    return [path.name, location] if external else [path.name]


def _external_locations(model: onnx.ModelProto) -> set[str]:
    from rlens.export.graph import all_tensors

    return {e.value for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"}
