"""The typed configuration of every stage (STYLE 9): one frozen dataclass each, declared once.

Each field that is a command-line flag carries its help, flag name, metavar and choices as
field metadata (:func:`option`); :mod:`rlens.cli.flags` derives the argparse flags from them, so
every default lives here and nowhere else. Light on purpose: importing this module imports
neither torch nor onnx nor numpy (the CLI builds its parser from it; the runtime reads it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rlens.attention_modes import ATTENTION_MODES, DEFAULT_ATTENTION_MODE
from rlens.errors import InputError
from rlens.pruning import PRUNING_METHODS

RANKINGS = ("greedy", "fast", "stats")
FFN_MODES = ("static", "dynamic")
DTYPES = ("fp32", "fp16")
LOAD_DTYPES = ("auto", "fp32", "fp16", "bf16")  # auto: the checkpoint's own dtype (config.dtype), fp32 for presets
OPS = ("standard", "ort")
WEIGHTS = ("float", "int8", "int4")
DEFAULT_PROPORTION = 0.5
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
IMAGE_SPLITTING_HELP = ("Idefics3/SmolVLM: turn the processor's image splitting off (one tile per image, one visual "
                        "span); written into rlens' own copy of the processor config, never the checkpoint's. A "
                        "checkpoint with do_image_splitting on is refused without it")


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None,
           choices: tuple[str, ...] | None = None, parse: Callable[[str], Any] | None = None,
           exclusive: str | None = None, group: str | None = None, show_default: bool = True,
           choices_from: str | None = None) -> Any:
    """A dataclass field that is also a CLI flag (``--field-name`` unless ``flag`` is given).

    ``parse``: the argparse ``type`` (default: the default's type); ``exclusive``: fields sharing
    this key form a mutually exclusive group; ``group``: an argument group title. A bool field
    is a switch (``--flag`` sets True; with ``flag="--no-x"`` it sets False). ``choices_from``:
    ``"module:attribute"`` of a registry whose names are the choices, read only when the flag is
    parsed or shown (so declaring it imports nothing)."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "parse": parse,
            "exclusive": exclusive, "group": group, "show_default": show_default, "choices_from": choices_from}
    return field(default=default, metadata={"cli": meta})


def _positive_int_or_plan(value: str) -> int | str:
    import argparse

    if value == "plan":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'plan', got {value!r}") from None


_PRUNING = "token pruning (docs/token_pruning.md)"


def _pruning_flag(name: str) -> Any:
    """The field of pruning method ``name``: its flag as the method declares it."""
    m = PRUNING_METHODS[name]
    return option(None, m.help, metavar=m.metavar, parse=m.parse_flag, group=_PRUNING)


@dataclass(frozen=True)
class CalibrationConfig:
    """Everything ``rlens calibrate`` takes besides the model and the data.

    ``budget`` (target prefill FLOPs ratio) and ``proportion`` (share of layers reduced) are
    exclusive; with neither, half of the layers are reduced (the paper's operating point).
    """

    ranking: str = option("greedy", "greedy: the paper's (add the least harmful layer each round, ~L^2/2 layer "
                          "evaluations); fast: each layer alone (L evaluations); stats: activation statistics "
                          "(one pass)", choices=RANKINGS)
    ffn_mode: str = option("static", "static: FFN units fixed at calibration; dynamic: picked per input by probes",
                           choices=FFN_MODES)
    window: int = option(256, "Hollow Attention window: visual tokens each visual query sees", metavar="W")
    ffn_keep: float = option(0.2, "FFN keep ratio rho: K = min(m, ceil(rho*m/16)*16) units for visual tokens",
                             metavar="RHO")
    probes: int = option(64, "probe tokens that pick the FFN units", metavar="M")
    budget: float | None = option(None, "target prefill FLOPs ratio: the smallest proportion of reduced layers "
                                  "that meets it", metavar="F", parse=float, exclusive="size")
    proportion: float | None = option(None, f"reduce round(P * layers) layers, most redundant first (default "
                                      f"{DEFAULT_PROPORTION} when no --budget)", metavar="P", parse=float,
                                      exclusive="size")
    #: rank hollow attention and the FFN reduction separately (two orders) instead of together.
    separate: bool = option(False, "rank hollow attention and the FFN reduction separately (default: together)")
    max_samples: int | None = option(None, "use at most N calibration samples", metavar="N", parse=int)
    seed: int = option(0, "seed of the built-in set and of sampling")
    #: token counts for the FLOPs ratio; default: the calibration set's means.
    visual_tokens: int | None = option(None, "visual tokens for the FLOPs budget (default: the calibration "
                                       "set's mean)", metavar="N", parse=int)
    text_tokens: int | None = option(None, "text tokens for the FLOPs budget (default: the calibration set's "
                                     "mean)", metavar="T", parse=int)
    #: samples of equal shape run together in batches of at most this many.
    batch_size: int = 8
    #: where the per-layer hidden-state cache lives ("cpu" to spare accelerator memory);
    #: default: where the decoder runs.
    cache_device: str | None = None
    progress: bool = True
    #: greedy only: stop after this many rounds (the rest of the order follows fast's); "plan":
    #: as many as the plan reduces (same plan as the full greedy, cheaper); None: all L rounds.
    greedy_rounds: int | str | None = option(
        None, "stop greedy after N rounds, or after the rounds the plan needs ('plan'); the rest of the order "
        "then follows the fast ranking (default: all rounds)", metavar="N|plan", parse=_positive_int_or_plan)
    #: greedy only: memory (GiB, on ``cache_device``) for candidates' checkpoints, which let a
    #: candidate resume after the layers its last run already computed; 0: none (slower, same result).
    greedy_cache_gib: float = option(
        4.0, "memory for greedy's per-candidate checkpoints (layer inputs a candidate resumes from in the next "
        "round; on the cache device); less memory -> more layer evaluations, same ranking; 0 turns them off",
        flag="--greedy-cache", metavar="GIB")
    image_splitting: bool = option(True, IMAGE_SPLITTING_HELP, flag="--no-image-splitting")
    #: token pruning (docs/token_pruning.md), one field per method of rlens.pruning (named as the
    #: method; the value its flag parses to): FastV (first pruned layer K, dropped share R) ...
    fastv: tuple[int, float] | None = _pruning_flag("fastv")
    #: ... or VTW: "auto" (first layer >= vtw_min_layer with mean KL <= vtw_eta) or a layer K.
    vtw: str | int | None = _pruning_flag("vtw")
    vtw_eta: float = option(0.003, "VTW auto threshold on KL(P_withdrawn || P_full) of the last token",
                            metavar="ETA", group=_PRUNING)
    vtw_min_layer: int = option(5, "VTW auto: first candidate layer", metavar="K", group=_PRUNING)

    def __post_init__(self) -> None:
        if self.ranking not in RANKINGS:
            raise InputError(f"--ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if self.ffn_mode not in FFN_MODES:
            raise InputError(f"--ffn-mode must be one of {', '.join(FFN_MODES)}, got {self.ffn_mode!r}")
        if self.budget is not None and self.proportion is not None:
            raise InputError("give either --budget or --proportion, not both")
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise InputError(f"--budget is a FLOPs ratio in (0, 1], got {self.budget}")
        if self.proportion is not None and not 0.0 <= self.proportion <= 1.0:
            raise InputError(f"--proportion must be in [0, 1], got {self.proportion}")
        if not 0.0 < self.ffn_keep <= 1.0:
            raise InputError(f"--ffn-keep must be in (0, 1], got {self.ffn_keep}")
        for name in ("window", "probes", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_samples is not None and self.max_samples < 1:
            raise InputError(f"--max-samples must be at least 1, got {self.max_samples}")
        if self.greedy_rounds is not None and self.greedy_rounds != "plan" and (
                not isinstance(self.greedy_rounds, int) or self.greedy_rounds < 1):
            raise InputError(
                f"--greedy-rounds must be a positive integer or 'plan', got {self.greedy_rounds!r}")
        if not self.greedy_cache_gib >= 0.0:
            raise InputError(f"--greedy-cache must be >= 0 GiB, got {self.greedy_cache_gib}")
        self._check_pruning()
        for name in ("visual_tokens", "text_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {value}")

    def _check_pruning(self) -> None:
        given = self.token_pruning_flags
        if len(given) > 1:
            raise InputError(f"give one token pruning method, not both {' and '.join('--' + m for m in given)}")
        for name, value in given.items():
            PRUNING_METHODS[name].check(value)
        if not self.vtw_eta >= 0.0:
            raise InputError(f"--vtw-eta must be >= 0, got {self.vtw_eta}")
        if self.vtw_min_layer < 0:
            raise InputError(f"--vtw-min-layer must be >= 0, got {self.vtw_min_layer}")

    @property
    def token_pruning_flags(self) -> dict[str, Any]:
        """Pruning method name -> its flag's value, for the methods given (at most one)."""
        return {m: getattr(self, m) for m in PRUNING_METHODS if getattr(self, m, None) is not None}

    @property
    def kinds(self) -> tuple[str, ...]:
        """The rankings to run: one joint ranking, or one per reduction."""
        return ("attention", "ffn") if self.separate else ("both",)


def _modes_help() -> str:
    return "; ".join(f"{m.name}: {m.help}" for m in ATTENTION_MODES.values())


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``rlens export`` (one frozen dataclass; the CLI only maps flags onto it)."""

    attention: str = option(DEFAULT_ATTENTION_MODE, f"how hollow layers are exported ({_modes_help()})",
                            choices=tuple(ATTENTION_MODES))
    dtype: str = option("fp32", "graph precision; fp16 keeps norms, softmax and residual sums in fp32", choices=DTYPES)
    ffn_mode: str | None = option(None, "override the plan's FFN mode (static needs the plan's calibrated "
                                  "ffn_indices)", choices=FFN_MODES)
    opset: int = option(18, "ONNX opset, 18..21", metavar="N")
    verify: bool = option(True, "skip the ONNX Runtime vs PyTorch check at export (on by default; fails the "
                          "export and leaves nothing when the max abs diff exceeds the tolerance)", flag="--no-verify")
    tolerance: float | None = option(None, "max abs diff allowed at verification (default "
                                     f"{DEFAULT_TOLERANCE['fp32']:g} fp32, {DEFAULT_TOLERANCE['fp16']:g} fp16)",
                                     metavar="T", parse=float)
    overwrite: bool = option(False, "replace an existing rlens bundle at the output (nothing else is ever "
                             "replaced: a folder of other files, a link or a device is refused)")
    ops: str | None = option(None, "ort: ONNX Runtime contrib ops (GroupQueryAttention with the KV cache, "
                             "RotaryEmbedding, SkipSimplifiedLayerNormalization, packed q/k/v) in unreduced layers "
                             "and the text rows of reduced ones; standard: ONNX ops only, as TensorRT parses them "
                             "(default: ort, standard with a plugin attention mode or --engine)", choices=OPS)
    weights: str = option("float", "weight-only quantization after the FFN split, block-wise along K: MatMulNBits "
                          "with --ops ort, DequantizeLinear (needs --opset 21) with --ops standard (float = --dtype)",
                          choices=WEIGHTS)
    weights_block: int = option(32, "rows of K per quantization scale: 16, 32, 64, 128 or 256", metavar="N")
    max_pixels: int | None = option(None, "lower the processor's max pixels per image (Qwen2-VL/2.5-VL; default: "
                                    "the checkpoint's bound); written into the bundle's processor files and manifest",
                                    metavar="N", parse=int)
    max_tiles: int | None = option(None, "lower the processor's max tiles per image (InternVL dynamic tiling; "
                                   "default: the checkpoint's bound)", metavar="N", parse=int)
    image_splitting: bool = option(True, IMAGE_SPLITTING_HELP, flag="--no-image-splitting")
    vision: bool = True
    external_data: bool | None = None  # None: when a graph's weights pass export.bundle.INLINE_LIMIT (256 MiB)

    def __post_init__(self) -> None:
        plugin = self.attention in ATTENTION_MODES and ATTENTION_MODES[self.attention].needs_plugin
        checks = [(self.attention in ATTENTION_MODES,
                   f"--attention must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}"),
                  (self.dtype in DTYPES, f"--dtype must be fp32 or fp16, got {self.dtype!r}"),
                  (self.ffn_mode in (None, *FFN_MODES), f"--ffn-mode must be static or dynamic, got {self.ffn_mode!r}"),
                  (18 <= self.opset <= 21, f"--opset must be between 18 and 21, got {self.opset}"),
                  (self.ops in (None, *OPS), f"--ops must be standard or ort, got {self.ops!r}"),
                  (not (self.ops == "ort" and plugin),
                   f"--attention {self.attention} targets TensorRT, which parses standard ops only: use --ops standard"),
                  (self.weights in WEIGHTS, f"--weights must be float, int8 or int4, got {self.weights!r}"),
                  (self.weights_block in (16, 32, 64, 128, 256),
                   f"--weights-block must be 16, 32, 64, 128 or 256, got {self.weights_block}"),
                  (self.weights == "float" or self.resolved_ops == "ort" or self.opset >= 21,
                   f"--weights {self.weights} with --ops standard writes DequantizeLinear with int4/blocks: needs --opset 21"),
                  (self.max_pixels is None or self.max_pixels > 0, f"--max-pixels must be > 0, got {self.max_pixels}"),
                  (self.max_tiles is None or self.max_tiles > 0, f"--max-tiles must be > 0, got {self.max_tiles}"),
                  (self.tolerance is None or 0 <= self.tolerance < float("inf"),
                   f"--tolerance must be a finite number >= 0, got {self.tolerance}")]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def resolved_ops(self) -> str:
        """The op set written: ``ort`` for ONNX Runtime bundles, ``standard`` for a plugin mode."""
        if self.ops is not None:
            return self.ops
        return "standard" if self.attention in ATTENTION_MODES and ATTENTION_MODES[self.attention].needs_plugin \
            else "ort"

    @property
    def max_abs_diff(self) -> float:
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE[self.dtype]


@dataclass(frozen=True)
class EngineConfig:
    """Options of ``rlens build-engine`` (and of ``rlens-export --engine``)."""

    plugin_lib: str | None = option(None, "librlens_trt_plugins.so for plugin-mode bundles (default: "
                                    "$RLENS_PLUGIN_LIB or build/plugins)", metavar="PATH")
    max_visual_tokens: int = option(1024, "visual tokens the prefill profile is tuned for", metavar="N")
    max_seq: int = option(2048, "longest sequence (prompt + image + generated tokens) the engines accept",
                          metavar="N")
    timing_cache: str | None = option(None, "TensorRT timing cache to read (if present) and update", metavar="FILE")
    workspace_mb: int = option(2048, "builder workspace limit in MB (use 512-1024 on 8 GB Jetsons)",
                               flag="--workspace", metavar="MB")
    graphs: tuple[str, ...] = ("embed_tokens", "vision", "decoder")

    def __post_init__(self) -> None:
        if self.workspace_mb < 16:
            raise InputError(f"--workspace must be at least 16 MB, got {self.workspace_mb}")
        if not 0 < self.max_visual_tokens < self.max_seq:
            raise InputError(f"need 0 < --max-visual-tokens ({self.max_visual_tokens}) < --max-seq ({self.max_seq})")


@dataclass(frozen=True)
class BenchConfig:
    """Options of ``rlens bench`` (synthetic decoder inputs, docs/runtime.md)."""

    visual_tokens: int = option(1024, "visual span length", metavar="N")
    text_tokens: int = option(64, "text tokens, a quarter before the span and the rest after", metavar="N")
    repeat: int = option(5, "timed repeats (pairs with --against)", metavar="R")
    decode_tokens: int = option(16, "decode steps per repeat", metavar="N")
    warmup: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        counts = (self.visual_tokens, self.text_tokens, self.repeat, self.decode_tokens, self.warmup, self.seed)
        if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 1 << 24 for c in counts) or \
                self.text_tokens < 1 or self.repeat < 1 or self.decode_tokens < 1:
            raise InputError("bench needs --visual-tokens >= 0, text tokens >= 1, --repeat >= 1, decode tokens >= 1")

    @property
    def text_before(self) -> int:
        return self.text_tokens // 4

    @property
    def span(self) -> tuple[int, int]:
        return (self.text_before, self.visual_tokens)

    @property
    def seq(self) -> int:
        return self.text_tokens + self.visual_tokens


@dataclass(frozen=True)
class RunnerConfig:
    """How a bundle's graphs run (``rlens run``, ``rlens bench``; ``Session.from_bundle``'s keywords)."""

    backend: str = option("onnxruntime", "runtime backend, one of %(choices)s; tensorrt runs the engines of "
                          "rlens build-engine, built on this GPU", metavar="NAME",
                          choices_from="rlens.runtime.backends:BACKENDS")
    providers: str = option("cpu", "ONNX Runtime execution providers in priority order, comma separated: cpu, "
                            "cuda, tensorrt (or full names like CUDAExecutionProvider); CPU is always the "
                            "fallback", metavar="LIST")
    threads: int = option(0, "intra-op threads (0 = ONNX Runtime's choice)", metavar="N")

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 0 <= self.threads <= 1024:
            raise InputError(f"--threads must be an integer from 0 to 1024, got {self.threads!r}")

    @property
    def provider_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.providers.split(",") if p.strip())


@dataclass(frozen=True)
class GenerationConfig:
    """Generation options of ``rlens run`` and ``Session.generate`` (whose keyword defaults these are)."""

    max_new_tokens: int = option(64, "tokens to generate at most", metavar="N")
    temperature: float = option(0.0, "sampling temperature; 0 = greedy (argmax, like Hugging Face)", metavar="T")
    top_p: float = option(1.0, "nucleus sampling mass", metavar="P")
    seed: int = option(0, "sampling seed", metavar="S")


@dataclass(frozen=True)
class InspectConfig:
    """The token layout ``rlens inspect`` accounts FLOPs for."""

    visual_tokens: int = option(256, "visual tokens in the prefill (256 = one InternVL tile)", metavar="N")
    text_tokens: int = option(64, "text tokens in the prefill", metavar="T")
    text_before: int = option(0, "how many of the text tokens come before the image", metavar="T0")

    def __post_init__(self) -> None:
        counts = (self.visual_tokens, self.text_tokens, self.text_before)
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts) \
                or self.text_before > self.text_tokens:
            raise InputError("token counts must be >= 0 and --text-before at most --text-tokens")


@dataclass(frozen=True)
class ModelSource:
    """How a command that takes MODEL loads it (``rlens calibrate/export/inspect``, ``rlens-export``)."""

    trust_remote_code: bool = option(False, "allow custom model code from a local directory (off by default)")
    load_dtype: str = option("auto", "dtype the weights are loaded and held in; auto: the checkpoint's own. "
                             "Independent of the exported graph's --dtype: an fp16 bundle exports from bf16 "
                             "weights", choices=LOAD_DTYPES)


@dataclass(frozen=True)
class DoctorConfig:
    """Options of ``rlens doctor`` (docs/jetson.md)."""

    bundle: str | None = option(None, "plugin-mode bundle to build and compare (default: the shipped "
                                "plugins/doctor/bundle-hollow-fp16)", metavar="BUNDLE")
    reps: int = option(20, "timed repetitions per measurement", metavar="N")
    json: str | None = option(None, "also write the table as JSON to this file (a new file or an earlier doctor "
                              "result; anything else is refused)", metavar="OUT")

    def __post_init__(self) -> None:
        if isinstance(self.reps, bool) or not isinstance(self.reps, int) or not 1 <= self.reps <= 100_000:
            raise InputError(f"--reps must be an integer from 1 to 100000, got {self.reps!r}")
