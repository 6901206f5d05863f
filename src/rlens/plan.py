"""plan.json (DESIGN §4): the typed plan, its validation, save and load.

Every way a plan file can be wrong raises :class:`PlanError` with one actionable line.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rlens.errors import PlanError
from rlens.pruning import PRUNING_METHODS

FORMAT = "rlens.plan"
VERSION = 1
FFN_MODES = ("static", "dynamic")
DEFAULT_VTW_ETA = 0.003
MAX_PLAN_BYTES = 256 << 20


def ffn_keep_for(rho: float, m: int) -> int:
    """DESIGN §3.2: ``K = min(m, ceil(rho * m / 16) * 16)`` kept FFN hidden units."""
    if not 0.0 < rho <= 1.0:
        raise PlanError(f"FFN keep ratio must be in (0, 1], got {rho}")
    return min(m, math.ceil(rho * m / 16) * 16)


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    fingerprint: str


@dataclass(frozen=True)
class LayerPlan:
    """Reductions of one decoder layer; ``None`` means that reduction is off in this layer."""

    index: int
    hollow_window: int | None = None
    ffn_keep: int | None = None
    ffn_indices: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index}
        if self.hollow_window is not None:
            d["hollow_window"] = self.hollow_window
        if self.ffn_keep is not None:
            d["ffn_keep"] = self.ffn_keep
        if self.ffn_indices is not None:
            d["ffn_indices"] = list(self.ffn_indices)
        return d


def kept_visual_tokens(n_visual: int, ratio: float) -> int:
    """FastV's kept count: ``N_v - floor(R * N_v)`` (the 1e-9 guards float error, e.g. 0.7 * 10)."""
    return n_visual - min(n_visual, math.floor(ratio * n_visual + 1e-9))


@dataclass(frozen=True)
class TokenPruning:
    """Visual-token pruning in prefill (docs/token_pruning.md). ``layer`` = K is the first decoder
    layer that sees the reduced token set (K layers run on every token, as FastV counts them);
    layers K.. keep ``N_v - floor(ratio * N_v)`` visual tokens, in their original order. What
    differs per ``method`` (:data:`rlens.pruning.PRUNING_METHODS`): whether layer K-1's
    head-averaged last-query attention ranks the tokens (FastV; ties: lower index) or none is
    kept (VTW, ``ratio`` 1 by definition).

    ``layer == num_layers`` prunes nothing (VTW found no layer under ``eta``)."""

    method: str
    layer: int
    ratio: float = 1.0
    eta: float | None = None
    chosen_by: str | None = None  # vtw: "auto" | "manual"
    divergence: float | None = None  # vtw auto: mean KL at the chosen layer

    @property
    def score_layer(self) -> int | None:
        """The layer whose attention ranks the visual tokens (None: the method ranks none)."""
        return self.layer - 1 if PRUNING_METHODS[self.method].ranks_tokens else None

    def kept(self, n_visual: int) -> int:
        return kept_visual_tokens(n_visual, self.ratio)

    def describe(self) -> str:
        return PRUNING_METHODS[self.method].describe(self)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "layer": self.layer}
        if PRUNING_METHODS[self.method].fixed_ratio is None:
            d["ratio"] = self.ratio
        for name in ("eta", "chosen_by", "divergence"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d


@dataclass(frozen=True)
class Ranking:
    method: str
    order: tuple[int, ...]
    divergence: tuple[float, ...] = ()


@dataclass(frozen=True)
class Plan:
    model: ModelInfo
    layers: tuple[LayerPlan, ...] = ()
    ffn_mode: str = "static"
    ffn_probes: int = 64
    ranking: Ranking | None = None
    flops: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    token_pruning: TokenPruning | None = None

    def layer(self, index: int) -> LayerPlan | None:
        for lp in self.layers:
            if lp.index == index:
                return lp
        return None

    def with_layers(self, layers: list[LayerPlan] | tuple[LayerPlan, ...]) -> Plan:
        return replace(self, layers=tuple(sorted(layers, key=lambda lp: lp.index)))

    def summary(self) -> str:
        n_h = sum(lp.hollow_window is not None for lp in self.layers)
        n_f = sum(lp.ffn_keep is not None for lp in self.layers)
        total = self.model.num_layers
        text = f"hollow attention in {n_h} of {total} layers, {self.ffn_mode} FFN reduction in {n_f} of {total}"
        if self.token_pruning is not None:
            text += f", token pruning {self.token_pruning.describe()}"
        return text

    # ---- json --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION, "model": asdict(self.model)}
        if self.ranking is not None:
            d["ranking"] = {
                "method": self.ranking.method,
                "order": list(self.ranking.order),
                "divergence": list(self.ranking.divergence),
            }
        d["ffn_mode"] = self.ffn_mode
        d["ffn_probes"] = self.ffn_probes
        d["layers"] = [lp.to_json() for lp in self.layers]
        if self.token_pruning is not None:
            d["token_pruning"] = self.token_pruning.to_json()
        if self.flops:
            d["flops"] = dict(self.flops)
        if self.calibration:
            d["calibration"] = dict(self.calibration)
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.dumps())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def check_matches(self, info: ModelInfo) -> None:
        """Raise :class:`PlanError` unless this plan was made for a model like ``info``."""
        mine = self.model
        for name in ("num_layers", "hidden_size", "intermediate_size"):
            if getattr(mine, name) != getattr(info, name):
                raise PlanError(
                    f"plan was made for a model with {name}={getattr(mine, name)}, this model has "
                    f"{getattr(info, name)}"
                )
        if mine.fingerprint and info.fingerprint and mine.fingerprint != info.fingerprint:
            raise PlanError(
                f"plan fingerprint {mine.fingerprint[:19]}... does not match the model's "
                f"{info.fingerprint[:19]}... (made for other weights); recalibrate"
            )


def empty_plan(info: ModelInfo) -> Plan:
    return Plan(model=info)


# ---- loading and validation ------------------------------------------------------------------
def load_plan(path: str | os.PathLike[str], info: ModelInfo | None = None) -> Plan:
    """Read and validate a plan file; with ``info``, also check it matches that model."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PLAN_BYTES:
            raise PlanError(f"cannot read plan {path}: not a regular file of at most {MAX_PLAN_BYTES >> 20} MiB")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PlanError(f"cannot read plan {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise PlanError(f"cannot read plan {path}: not UTF-8 text (is it a plan.json?)") from None
    plan = plan_from_json_text(text, source=str(path))
    if info is not None:
        plan.check_matches(info)
    return plan


def plan_from_json_text(text: str, source: str = "plan") -> Plan:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, over-long integers, deep nesting
        raise PlanError(f"{source}: not valid JSON ({str(e)[:200]})") from None
    return plan_from_dict(data, source)


def plan_from_dict(data: Any, source: str = "plan") -> Plan:
    p = _Reader(source)
    p.require(isinstance(data, dict), "the top level must be a JSON object")
    p.require(data.get("format") == FORMAT, f"'format' must be {FORMAT!r}, got {data.get('format')!r}")
    version = data.get("version")
    p.require(
        version == VERSION and type(version) is int,
        f"unsupported plan version {version!r}; this rlens reads version {VERSION}",
    )
    info = _model_info(p, data.get("model"))
    mode = data.get("ffn_mode", "static")
    p.require(mode in FFN_MODES, f"'ffn_mode' must be one of {FFN_MODES}, got {mode!r}")
    probes = p.integer(data.get("ffn_probes", 64), "ffn_probes", lo=1)
    layers_raw = data.get("layers", [])
    p.require(isinstance(layers_raw, list), "'layers' must be a list")
    layers = [_layer(p, raw, info, mode, i) for i, raw in enumerate(layers_raw)]
    seen: set[int] = set()
    for lp in layers:
        p.require(lp.index not in seen, f"layer index {lp.index} is listed twice")
        seen.add(lp.index)
    ranking = _ranking(p, data.get("ranking"), info.num_layers)
    flops = data.get("flops", {})
    calib = data.get("calibration", {})
    p.require(isinstance(flops, dict), "'flops' must be an object")
    p.require(isinstance(calib, dict), "'calibration' must be an object")
    pruning = _token_pruning(p, data.get("token_pruning"), info.num_layers)
    return Plan(
        model=info,
        layers=tuple(sorted(layers, key=lambda lp: lp.index)),
        ffn_mode=mode,
        ffn_probes=probes,
        ranking=ranking,
        flops=flops,
        calibration=calib,
        token_pruning=pruning,
    )


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            raise PlanError(f"{self.source}: {message}")

    def integer(self, value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
        self.require(type(value) is int, f"{name} must be an integer, got {str(value)[:40]!r}")
        self.require(lo is None or value >= lo, f"{name}={str(value)[:40]} is below {lo}")
        self.require(hi is None or value <= hi, f"{name}={str(value)[:40]} is above {hi}")
        return value


def _model_info(p: _Reader, raw: Any) -> ModelInfo:
    p.require(isinstance(raw, dict), "'model' must be an object")
    arch = raw.get("architecture")
    p.require(isinstance(arch, str) and bool(arch), "model.architecture must be a non-empty string")
    fp = raw.get("fingerprint", "")
    p.require(isinstance(fp, str), "model.fingerprint must be a string")
    return ModelInfo(
        architecture=arch,
        num_layers=p.integer(raw.get("num_layers"), "model.num_layers", lo=1),
        hidden_size=p.integer(raw.get("hidden_size"), "model.hidden_size", lo=1),
        intermediate_size=p.integer(raw.get("intermediate_size"), "model.intermediate_size", lo=1),
        fingerprint=fp,
    )


def _layer(p: _Reader, raw: Any, info: ModelInfo, mode: str, pos: int) -> LayerPlan:
    where = f"layers[{pos}]"
    p.require(isinstance(raw, dict), f"{where} must be an object")
    extra = set(raw) - {"index", "hollow_window", "ffn_keep", "ffn_indices"}
    p.require(not extra, f"{where} has unknown keys {sorted(extra)}")
    index = p.integer(raw.get("index"), f"{where}.index", lo=0, hi=info.num_layers - 1)
    window = raw.get("hollow_window")
    if window is not None:
        p.integer(window, f"{where}.hollow_window", lo=1)
    keep = raw.get("ffn_keep")
    m = info.intermediate_size
    if keep is not None:
        p.integer(keep, f"{where}.ffn_keep", lo=1, hi=m)
    indices = raw.get("ffn_indices")
    if indices is not None:
        p.require(keep is not None, f"{where}: ffn_indices given without ffn_keep")
        p.require(isinstance(indices, list), f"{where}.ffn_indices must be a list")
        for v in indices:
            p.integer(v, f"{where}.ffn_indices[...]", lo=0, hi=m - 1)
        p.require(len(indices) == keep, f"{where}: {len(indices)} ffn_indices for ffn_keep={keep}")
        p.require(len(set(indices)) == len(indices), f"{where}.ffn_indices has duplicates")
        indices = tuple(indices)
    if mode == "static" and keep is not None:
        p.require(indices is not None, f"{where}: static FFN mode needs ffn_indices")
    p.require(window is not None or keep is not None, f"{where} reduces nothing (no hollow_window, no ffn_keep)")
    return LayerPlan(index=index, hollow_window=window, ffn_keep=keep, ffn_indices=indices)


def _ranking(p: _Reader, raw: Any, num_layers: int) -> Ranking | None:
    if raw is None:
        return None
    p.require(isinstance(raw, dict), "'ranking' must be an object")
    method = raw.get("method")
    p.require(isinstance(method, str), "ranking.method must be a string")
    order = raw.get("order", [])
    p.require(isinstance(order, list), "ranking.order must be a list")
    for v in order:
        p.integer(v, "ranking.order[...]", lo=0, hi=num_layers - 1)
    p.require(len(set(order)) == len(order), "ranking.order has duplicates")
    div = raw.get("divergence", [])
    p.require(isinstance(div, list), "ranking.divergence must be a list")
    for v in div:
        p.require(isinstance(v, (int, float)) and not isinstance(v, bool), "ranking.divergence holds numbers")
    return Ranking(method=method, order=tuple(order), divergence=tuple(float(v) for v in div))


def _number(p: _Reader, value: Any, name: str, lo: float, hi: float) -> float:
    p.require(isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} must be a number")
    p.require(lo <= value <= hi, f"{name}={value} is outside [{lo}, {hi}]")
    return float(value)


def _token_pruning(p: _Reader, raw: Any, num_layers: int) -> TokenPruning | None:
    if raw is None:
        return None
    where = "token_pruning"
    p.require(isinstance(raw, dict), f"'{where}' must be an object")
    extra = set(raw) - {"method", "layer", "ratio", "eta", "chosen_by", "divergence"}
    p.require(not extra, f"{where} has unknown keys {sorted(extra)}")
    method = raw.get("method")
    p.require(method in PRUNING_METHODS, f"{where}.method must be one of {tuple(PRUNING_METHODS)}, got {method!r}")
    spec = PRUNING_METHODS[method]
    layer = p.integer(raw.get("layer"), f"{where}.layer", lo=spec.min_layer, hi=num_layers)  # K-1 ranks
    if spec.fixed_ratio is None:
        p.require("ratio" in raw, f"{where}: {method} needs 'ratio' (share of visual tokens dropped)")
        ratio = _number(p, raw["ratio"], f"{where}.ratio", 0.0, 1.0)
    else:
        p.require(raw.get("ratio", spec.fixed_ratio) == spec.fixed_ratio,
                  f"{where}: {method} drops a fixed share {spec.fixed_ratio:g} of the visual tokens (no 'ratio')")
        ratio = spec.fixed_ratio
    eta = raw.get("eta")
    if eta is not None:
        eta = _number(p, eta, f"{where}.eta", 0.0, math.inf)
    chosen = raw.get("chosen_by")
    p.require(chosen in (None, "auto", "manual"), f"{where}.chosen_by must be 'auto' or 'manual'")
    div = raw.get("divergence")
    if div is not None:
        div = _number(p, div, f"{where}.divergence", -math.inf, math.inf)
    return TokenPruning(method, layer, ratio, eta, chosen, div)
