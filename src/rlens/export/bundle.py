"""The export edge: loaded model + plan -> bundle/ (DESIGN §5), atomic and deterministic.

Everything is written to a temporary folder beside the target, verified against the PyTorch
golden, hashed into manifest.json and only then renamed into place: an interrupted or failed
export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rlens.errors import BundleError, InputError
from rlens.fileio import sha256_file
from rlens.plan import Plan

FORMAT = "rlens.bundle"
VERSION = 1
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
    max_pixels: int | None = None  # lower the processor's max pixels per image (Qwen2-VL family)
    max_tiles: int | None = None  # lower the processor's max tiles per image (InternVL)

    def __post_init__(self) -> None:
        checks = [(self.attention in ("portable", "plugin"), f"--attention must be portable or plugin, got {self.attention!r}"),
                  (self.dtype in ("fp32", "fp16"), f"--dtype must be fp32 or fp16, got {self.dtype!r}"),
                  (self.ffn_mode in (None, "static", "dynamic"), f"--ffn-mode must be static or dynamic, got {self.ffn_mode!r}"),
                  (18 <= self.opset <= 21, f"--opset must be between 18 and 21, got {self.opset}"),
                  (self.max_pixels is None or self.max_pixels > 0, f"--max-pixels must be > 0, got {self.max_pixels}"),
                  (self.max_tiles is None or self.max_tiles > 0, f"--max-tiles must be > 0, got {self.max_tiles}")]
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


def bundle_from_plan(loaded: Any, plan: Plan, out_dir: str | os.PathLike[str], config: ExportConfig) -> Path:
    """Export ``loaded`` reduced by ``plan`` into the bundle folder ``out_dir``; returns its path.

    Raises :class:`BundleError` if ``out_dir`` exists (unless ``config.overwrite``) or if
    verification finds a graph off by more than the tolerance (nothing is left then).
    """
    out = Path(out_dir).resolve()
    if out.exists() and not config.overwrite:
        raise BundleError(f"{out} already exists; choose another --out or pass --overwrite")
    plan.check_matches(loaded.info())
    plan = effective_plan(plan, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        from rlens.export.writer import write_bundle

        write_bundle(loaded, plan, tmp, config)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / "old")
    os.replace(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def write_manifest(folder: Path, body: dict[str, Any]) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    body = dict(body, files={p.relative_to(folder).as_posix(): sha256_file(p) for p in files})
    (folder / "manifest.json").write_text(json.dumps(body, indent=2, sort_keys=False, default=_json) + "\n")


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x).__name__)
