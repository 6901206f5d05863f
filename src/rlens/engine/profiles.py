"""Optimization profiles for the decoder and vision engines, from the bundle's manifest.

The decoder gets two profiles over the same engine:
- prefill: past length 0, sequence 1..max_seq (opt: max_visual_tokens + 64 text tokens);
- decode: sequence 1, past 1..max_seq - 1.
Batch is 1 (the runtime generates one sequence at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlens.errors import BundleError, InputError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ProfileShapes:
    name: str
    shapes: dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)
    #: value bounds for inputs TensorRT may treat as shape tensors (``visual_span`` feeds Slice
    #: bounds): used instead of ``shapes`` when the parsed network marks the input as one.
    values: dict[str, tuple[Shape, Shape, Shape]] | None = None


def _dims(io: dict[str, Any], values: dict[str, tuple[int, int, int]]) -> tuple[Shape, Shape, Shape]:
    mins, opts, maxs = [], [], []
    for d in io["shape"]:
        if isinstance(d, int):
            lo = opt = hi = d
        elif d in values:
            lo, opt, hi = values[d]
        else:
            raise BundleError(f"input {io['name']} has a dimension {d!r} rlens cannot bound for TensorRT")
        mins.append(lo)
        opts.append(opt)
        maxs.append(hi)
    return tuple(mins), tuple(opts), tuple(maxs)


def decoder_profiles(manifest: dict[str, Any], max_seq: int, max_visual: int) -> list[ProfileShapes]:
    if max_seq < 2 or not 0 < max_visual < max_seq:
        raise InputError(f"need 0 < --max-visual-tokens ({max_visual}) < --max-seq ({max_seq})")
    inputs = manifest["graphs"]["decoder"]["inputs"]
    opt_prefill = min(max_seq, max_visual + 64)
    prefill = {"batch": (1, 1, 1), "sequence": (1, opt_prefill, max_seq), "past_sequence": (0, 0, 0),
               "total_sequence": (1, opt_prefill, max_seq)}
    opt_past = min(opt_prefill, max_seq - 1)  # min <= opt <= max in every profile
    decode = {"batch": (1, 1, 1), "sequence": (1, 1, 1), "past_sequence": (1, opt_past, max_seq - 1),
              "total_sequence": (2, opt_past + 1, max_seq)}
    # Layers after FastV/VTW pruning keep a shorter KV cache (docs/token_pruning.md): same bounds.
    prefill.update(past_sequence_pruned=(0, 0, 0), total_sequence_pruned=prefill["total_sequence"])
    decode.update(past_sequence_pruned=decode["past_sequence"], total_sequence_pruned=decode["total_sequence"])
    span_values = {"prefill": ((0, 0), (min(16, max_seq - max_visual), max_visual), (max_seq, max_seq)),
                   "decode": ((0, 0), (0, 0), (0, 0))}
    return [ProfileShapes(name, {io["name"]: _dims(io, vals) for io in inputs}, {"visual_span": span_values[name]})
            for name, vals in (("prefill", prefill), ("decode", decode))]


def vision_profile(manifest: dict[str, Any], max_images: int = 1) -> ProfileShapes:
    """One profile. Named dynamic axes take the bounds the export recorded from the model's processor
    (manifest ``vision.axes``: Qwen2-VL patches within min/max pixels, InternVL tiles); an unnamed
    dynamic leading dim is bounded by ``max_images``; other dynamic dims are an error."""
    inputs = manifest["graphs"]["vision"]["inputs"]
    axes = (manifest.get("vision") or {}).get("axes") or {}
    shapes = {}
    for io in inputs:
        dims = io["shape"]
        if any(isinstance(d, str) and d in axes for d in dims):
            lo_hi = {d: (axes[d][0], _opt(axes[d]), axes[d][1]) for d in dims if isinstance(d, str)}
            shapes[io["name"]] = _dims(io, lo_hi)
            continue
        fixed = [d if isinstance(d, int) else None for d in dims]
        if any(d is None for d in fixed[1:]):
            raise BundleError(f"vision input {io['name']} {dims} has dynamic inner dims; TensorRT needs bounds")
        lead = fixed[0]
        lo, hi = (lead, lead) if lead is not None else (1, max_images)
        shapes[io["name"]] = ((lo, *fixed[1:]), (lo, *fixed[1:]), (hi, *fixed[1:]))
    return ProfileShapes("vision", shapes)


def _opt(bounds: list[int]) -> int:
    """The profile's opt point: the geometric middle of [min, max] (a mid-size image)."""
    lo, hi = int(bounds[0]), int(bounds[1])
    return max(lo, min(hi, int((lo * hi) ** 0.5)))
