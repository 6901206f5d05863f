"""Export options and ONNX file writing (a leaf of rlens.export: the writer imports it, never back).

``bundle_from_plan`` (rlens.export.writer) builds the bundle in a temporary folder beside the
target and commits it through :func:`rlens.fileio.output_writer`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from rlens.errors import InputError
from rlens.plan import Plan

EXTERNAL_DATA_LIMIT = 2**31 - 2**26  # protobuf's 2 GiB, with headroom for the graph itself
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``rlens export`` (one frozen dataclass; the CLI only maps flags onto it)."""

    attention: str = "portable"  # "portable" | "plugin"
    dtype: str = "fp32"  # "fp32" | "fp16"
    ffn_mode: str | None = None  # override the plan's ffn_mode ("static" | "dynamic")
    opset: int = 18
    verify: bool = True
    tolerance: float | None = None  # max abs diff allowed at verification (default per dtype)
    overwrite: bool = False
    vision: bool = True
    external_data: bool | None = None  # None: only when a graph would pass 2 GiB

    def __post_init__(self) -> None:
        checks = [(self.attention in ("portable", "plugin"), f"--attention must be portable or plugin, got {self.attention!r}"),
                  (self.dtype in ("fp32", "fp16"), f"--dtype must be fp32 or fp16, got {self.dtype!r}"),
                  (self.ffn_mode in (None, "static", "dynamic"), f"--ffn-mode must be static or dynamic, got {self.ffn_mode!r}"),
                  (18 <= self.opset <= 21, f"--opset must be between 18 and 21, got {self.opset}"),
                  (self.tolerance is None or 0 <= self.tolerance < float("inf"),
                   f"--tolerance must be a finite number >= 0, got {self.tolerance}")]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def max_abs_diff(self) -> float:
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE[self.dtype]


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


def save_onnx(model: onnx.ModelProto, path: Path, external: bool | None) -> list[str]:
    """Write ``model``; weights go to ``<name>.data`` when asked or when over 2 GiB."""
    if external is None:
        external = model.ByteSize() > EXTERNAL_DATA_LIMIT
    if external:
        location = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024, convert_attribute=False)
        return [path.name, location]
    path.write_bytes(model.SerializeToString(deterministic=True))
    return [path.name]
