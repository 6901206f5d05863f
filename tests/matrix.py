"""The coverage matrix (STYLE 8), declared as data: family x reduction x attention mode x dtype x
FFN mode x backend. Every cell is either TESTED (by the named tests, which compare the exported
graph numerically with the PyTorch reference or Hugging Face) or listed in UNTESTED with the
reason. ``tests/test_matrix.py`` checks that, and ``python tests/matrix.py`` prints the matrix with
its untested cells.

The axes come from the registries, so a new family, attention mode, pruning method, dtype, FFN
mode or backend adds cells that fail the test until they are tested or listed with a reason.
Cells where an axis does not apply hold "-": the FFN mode without a RedundancyLens FFN reduction,
the attention mode without hollow layers (plugin mode only changes hollow layers).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from rlens.attention_modes import ATTENTION_MODES
from rlens.configs import DTYPES, FFN_MODES
from rlens.families import all_families
from rlens.presets import PRESETS
from rlens.pruning import PRUNING_METHODS
from rlens.runtime.backends import BACKENDS

NA = "-"
FAMILIES = tuple(sorted(all_families()))
PRESET_FAMILIES = tuple(sorted({p.family for p in PRESETS.values()}))
PRUNING = tuple(PRUNING_METHODS)
RL = "redundancylens"  # hollow attention + probe FFN in some layers
REDUCTIONS = ("none", RL, *PRUNING, *(f"{RL}+{m}" for m in PRUNING))
AXES = ("family", "reduction", "attention", "dtype", "ffn_mode", "backend")


def cells() -> Iterator[dict[str, str]]:
    for family, reduction, dtype, backend in itertools.product(FAMILIES, REDUCTIONS, DTYPES, tuple(BACKENDS)):
        has_rl = reduction.startswith(RL)
        for attention in (tuple(ATTENTION_MODES) if has_rl else (NA,)):
            for ffn in (FFN_MODES if has_rl else (NA,)):
                yield dict(family=family, reduction=reduction, attention=attention, dtype=dtype, ffn_mode=ffn,
                           backend=backend)


def _rl(*pruning: str) -> tuple[str, ...]:
    return tuple(f"{RL}+{m}" for m in pruning)


ORT = "onnxruntime"
#: (pattern, tests): a pattern maps an axis to the values it covers (an axis left out: any value)
TESTED: list[tuple[dict, tuple[str, ...]]] = [
    ({"family": PRESET_FAMILIES, "reduction": ("none", RL), "attention": ("portable", NA), "dtype": "fp32",
      "backend": ORT},
     ("test_export_decoder.py::test_decoder_matches_reference_prefill_and_3_decode_steps",)),
    ({"family": PRESET_FAMILIES, "reduction": ("fastv", "vtw", RL, *_rl("fastv", "vtw")),
      "attention": ("portable", NA), "dtype": "fp32", "backend": ORT},
     ("test_tokens_export.py::test_pruned_decoder_matches_reference",)),
    ({"family": "qwen2-vl", "reduction": RL, "attention": "plugin", "ffn_mode": "dynamic", "dtype": "fp32",
      "backend": ORT}, ("test_export_decoder.py::test_plugin_mode_equals_portable",)),
    ({"family": "qwen2.5-vl", "reduction": RL, "attention": "plugin", "ffn_mode": "dynamic", "dtype": "fp32",
      "backend": ORT}, ("test_export_bundle.py::test_dynamic_override_and_plugin_bundle",)),
    ({"family": "qwen2-vl", "reduction": _rl("fastv"), "attention": "plugin", "ffn_mode": "static",
      "dtype": "fp32", "backend": ORT},
     ("test_tokens_export.py::test_plugin_mode_equals_portable_and_fp16_is_close",)),
    ({"family": "qwen2-vl", "reduction": RL, "attention": "portable", "dtype": "fp16", "backend": ORT},
     ("test_export_decoder.py::test_fp16_graph_is_typed_and_close",)),
    ({"family": "qwen2-vl", "reduction": _rl("fastv"), "attention": "portable", "ffn_mode": "static",
      "dtype": "fp16", "backend": ORT},
     ("test_tokens_export.py::test_plugin_mode_equals_portable_and_fp16_is_close",)),
]

#: (pattern, reason): cells not tested here, and why
UNTESTED: list[tuple[dict, str]] = [
    ({"backend": "tensorrt"}, "TensorRT and a GPU are not available here: test_engine.py's engine and backend "
                              "tests (llava/qwen2-vl, portable and plugin, fp32) skip; run them on the target "
                              "(docs/jetson.md)"),
    ({"dtype": "fp16", "backend": ORT}, "fp16 numerics are checked on qwen2-vl only (graph typing is family-"
                                        "independent); fp16 without reductions and with pruning alone untested"),
    ({"attention": "plugin", "dtype": "fp32", "backend": ORT},
     "plugin mode is checked against portable on qwen2-vl/qwen2.5-vl only (the node's function body is the "
     "portable subgraph's builder code)"),
]


def matches(pattern: dict, cell: dict[str, str]) -> bool:
    for axis, allowed in pattern.items():
        allowed = (allowed,) if isinstance(allowed, str) else allowed
        if cell[axis] not in allowed:
            return False
    return True


def status(cell: dict[str, str]) -> tuple[list[str], list[str]]:
    """(tests covering ``cell``, reasons it is listed untested)."""
    tests = [t for p, ts in TESTED for t in ts if matches(p, cell)]
    reasons = [r for p, r in UNTESTED if matches(p, cell)]
    return tests, reasons


def main() -> None:
    rows = list(cells())
    untested = [c for c in rows if not status(c)[0]]
    print(f"{len(rows)} cells, {len(rows) - len(untested)} tested, {len(untested)} untested")
    by_reason: dict[str, int] = {}
    for c in untested:
        for r in status(c)[1][:1]:
            by_reason[r] = by_reason.get(r, 0) + 1
    for r, n in by_reason.items():
        print(f"{n:4d} untested: {r}")


if __name__ == "__main__":
    main()
