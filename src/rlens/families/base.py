"""What a model family declares. Generic code asks a :class:`Family`; it never names one.

A family is one short file: a subclass with a few class attributes and, where the family really
differs, one or two small methods, registered with :func:`rlens.families.register`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rlens.errors import InputError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class VisualSpan:
    """One contiguous run of visual tokens: positions ``start .. start + length - 1``."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length

    def as_tuple(self) -> tuple[int, int]:
        return (self.start, self.length)


NO_SPAN = VisualSpan(0, 0)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class Family:
    """Base class of the model families. Subclasses set the class attributes below."""

    name: ClassVar[str]
    #: Hugging Face ``config.architectures`` names and ``model_type`` values this family handles.
    architectures: ClassVar[tuple[str, ...]]
    model_types: ClassVar[tuple[str, ...]]
    #: transformers class used to build a model from a config (presets) or load a directory.
    model_class: ClassVar[str]
    #: attribute path from the top-level model to the text decoder (``.layers``, ``.norm`` ...).
    language_model_path: ClassVar[str] = "model.language_model"
    #: attribute path from the top-level model to the vision tower and the projector.
    vision_paths: ClassVar[tuple[str, ...]] = ("model.vision_tower", "model.multi_modal_projector")
    attention_attr: ClassVar[str] = "self_attn"
    mlp_attr: ClassVar[str] = "mlp"
    ffn_names: ClassVar[tuple[str, str, str]] = ("gate_proj", "up_proj", "down_proj")
    #: "default" (1-D positions) or "mrope" (Qwen2-VL's 3-D multimodal rotary positions).
    rope_kind: ClassVar[str] = "default"
    #: config attributes holding the visual token id(s), first one present wins for each.
    visual_token_attrs: ClassVar[tuple[str, ...]] = ("image_token_id",)
    #: the text an image slot of the chat template becomes: ``{visual}`` is the image token (the
    #: tokenizer's string for the model's image token id) repeated once per visual feature; other
    #: fields come from :attr:`expansion_tokens`, overridden by the tokenizer config's special tokens.
    image_expansion: ClassVar[str] = "{visual}"
    expansion_tokens: ClassVar[dict[str, str]] = {}
    #: keyword arguments the model's own processor passes to its image processor
    image_call_kwargs: ClassVar[dict[str, Any]] = {}
    #: torch.onnx exporters tried in order for vision.onnx ("torchscript", "dynamo"): a family whose
    #: vision code the TorchScript exporter cannot take skips it (that exporter prints its whole IR
    #: graph on stderr when it fails).
    vision_exporters: ClassVar[tuple[str, ...]] = ("torchscript", "dynamo")

    # ---- structure -------------------------------------------------------------------------
    @classmethod
    def text_config(cls, config: Any) -> Any:
        return config.get_text_config()

    @classmethod
    def language_model(cls, model: Any) -> Any:
        return _get_path(model, cls.language_model_path)

    @classmethod
    def decoder_layers(cls, model: Any) -> Any:
        return cls.language_model(model).layers

    @classmethod
    def attention(cls, layer: Any) -> Any:
        return getattr(layer, cls.attention_attr)

    @classmethod
    def ffn(cls, layer: Any) -> Any:
        return getattr(layer, cls.mlp_attr)

    @classmethod
    def ffn_linears(cls, mlp: Any) -> tuple[Any, Any, Any]:
        """(gate, up, down) ``nn.Linear`` modules of a SwiGLU FFN."""
        return tuple(getattr(mlp, n) for n in cls.ffn_names)  # type: ignore[return-value]

    @classmethod
    def lm_head(cls, model: Any) -> Any:
        return model.lm_head

    # ---- tokens ----------------------------------------------------------------------------
    @classmethod
    def visual_token_ids(cls, config: Any) -> tuple[int, ...]:
        ids = []
        for attr in cls.visual_token_attrs:
            value = getattr(config, attr, None)
            if value is not None:
                ids.append(int(value))
        if not ids:
            raise ModelError(f"{cls.name}: the config has none of {', '.join(cls.visual_token_attrs)}")
        return tuple(ids)

    @classmethod
    def find_visual_span(cls, input_ids: Any, config: Any) -> VisualSpan:
        """The one contiguous visual span shared by every row of ``input_ids`` ([B, S] or [S]).

        Raises :class:`InputError` for several separated spans or rows that disagree.
        """
        import numpy as np

        ids = np.asarray(input_ids.cpu() if hasattr(input_ids, "cpu") else input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        spans = {_span_of_row(row, cls.visual_token_ids(config)) for row in ids}
        if len(spans) != 1:
            raise InputError(
                "batch rows have their visual tokens at different positions; rlens needs one shared "
                "visual_span per batch (same template and image size)"
            )
        return spans.pop()

    # ---- geometry --------------------------------------------------------------------------
    @classmethod
    def extra_text_inputs(cls, input_ids: Any, config: Any) -> dict[str, Any]:
        """Extra per-token model inputs the family's forward needs besides ``input_ids``."""
        return {}

    @classmethod
    def visual_tokens_from_pixels(cls, config: Any, processed: dict[str, Any]) -> int:
        """Visual tokens of one image, from the image processor's output for it."""
        return cls.visual_tokens_per_image(config)

    @classmethod
    def visual_tokens_per_image(cls, config: Any, image_size: tuple[int, int] | None = None) -> int:
        """How many visual tokens one image gives (at ``image_size`` = (height, width) after resize)."""
        raise NotImplementedError

    # ---- vision graph -----------------------------------------------------------------------
    #: vision graph inputs with a dynamic axis: {input name: {axis: axis name}} (others fixed)
    vision_dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {}

    @classmethod
    def vision_params(cls, config: Any) -> dict[str, Any]:
        """Numbers the runtime needs to build vision feeds (recorded in the manifest's ``vision``)."""
        return {}

    @classmethod
    def vision_feeds(cls, processed: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """The vision graph's inputs for one image, from the image processor's output (numpy)."""
        return {k: v for k, v in processed.items() if k not in ("num_patches",)}

    @classmethod
    def token_grid(cls, processed: dict[str, Any], params: dict[str, Any]) -> tuple[int, int, int] | None:
        """The (t, h, w) grid of the visual tokens, for families with M-RoPE (else ``None``)."""
        return None

    @classmethod
    def vision_module(cls, model: Any, names: list[str]) -> Any:
        """The torch module exported as vision.onnx: ``(*feeds in names order) -> features [N_v, H]``."""
        return image_features_module(model, names)

    @classmethod
    def image_bounds(cls, image_processor: dict[str, Any]) -> dict[str, int]:
        """The processor's bounds on image size / tiles (from preprocessor_config.json)."""
        return {}

    @classmethod
    def vision_axes(cls, params: dict[str, Any], bounds: dict[str, int]) -> dict[str, list[int]]:
        """[min, max] of each dynamic vision axis (by name) within the processor's bounds: TensorRT
        profiles follow them."""
        return {}

    #: the processor bound ``rlens export`` may lower: (flag, its key in :meth:`image_bounds`, the
    #: lower limit's key there, the limit's name in the processor config); None: none
    lowerable: tuple[str, str, str, str] | None = None
    #: why the other bound flag does not apply to this family (the refusal's second half)
    bound_note = "its processor resizes every image to one fixed size"

    @classmethod
    def lower_bounds(cls, image_processor: dict[str, Any], max_pixels: int | None,
                     max_tiles: int | None) -> dict[str, Any]:
        """preprocessor_config.json with bounds lowered (``--max-pixels``/``--max-tiles``): the
        family's :attr:`lowerable` flag only, between the processor's limits; :meth:`with_bound`
        writes it."""
        given = {"--max-pixels": max_pixels, "--max-tiles": max_tiles}
        flag = cls.lowerable[0] if cls.lowerable else None
        for other, value in given.items():
            if value is not None and other != flag:
                raise InputError(f"{other} does not apply to {cls.name} ({cls.bound_note})"
                                 + (f"; use {flag}" if flag else ""))
        if flag is None:
            return image_processor
        _, high, low, low_name = cls.lowerable
        value, bounds = given[flag], cls.image_bounds(image_processor)
        if value is None or value >= bounds[high]:
            return image_processor
        if value < bounds[low]:
            raise InputError(f"{flag} {value} is below the processor's {low_name} {bounds[low]}")
        return cls.with_bound(image_processor, value, bounds)

    @classmethod
    def with_bound(cls, image_processor: dict[str, Any], value: int, bounds: dict[str, int]) -> dict[str, Any]:
        """The processor config with the :attr:`lowerable` bound set to ``value`` (already checked)."""
        raise NotImplementedError(f"{cls.name} declares lowerable but not with_bound")

    @classmethod
    def image_options(cls, image_processor: dict[str, Any], image_splitting: bool) -> dict[str, Any]:
        """preprocessor_config.json with image splitting turned off (``--no-image-splitting``)."""
        if not image_splitting:
            raise InputError(f"--no-image-splitting does not apply to {cls.name}: only Idefics3/SmolVLM split "
                             "images into tiles with text tokens between them")
        return image_processor

    # ---- support checks --------------------------------------------------------------------
    @classmethod
    def check_supported(cls, model: Any) -> None:
        """Raise :class:`ModelError` unless the decoder layers have a SwiGLU FFN rlens can reduce."""
        text = cls.text_config(model.config)
        act = getattr(text, "hidden_act", None)
        layer = cls.decoder_layers(model)[0]
        mlp = getattr(layer, cls.mlp_attr, None)
        names_ok = mlp is not None and all(hasattr(mlp, n) for n in cls.ffn_names)
        if act not in ("silu", "swish") or not names_ok:
            raise ModelError(
                f"{cls.name}: rlens v1 reduces SwiGLU FFNs (silu gate * up -> down); this model has "
                f"hidden_act={act!r} and FFN {type(mlp).__name__}"
            )

    @classmethod
    def sizes(cls, config: Any) -> dict[str, int]:
        """Decoder sizes used by plans and the FLOPs count."""
        t = cls.text_config(config)
        heads = int(t.num_attention_heads)
        head_dim = int(getattr(t, "head_dim", None) or t.hidden_size // heads)
        return {
            "num_layers": int(t.num_hidden_layers),
            "hidden_size": int(t.hidden_size),
            "intermediate_size": int(t.intermediate_size),
            "num_heads": heads,
            "num_kv_heads": int(getattr(t, "num_key_value_heads", None) or heads),
            "head_dim": head_dim,
            "vocab_size": int(t.vocab_size),
        }


    # ---- text-decoder export hooks -----------------------------------------------------------
    # rlens.export.decoder writes a Llama-shaped layer and asks the family for every piece of it,
    # as onnxruntime-genai's builder subclasses and optimum's configs do. A family that differs
    # overrides one of these in its own file; what the exporter cannot write fails with one clear
    # error from :meth:`check_exportable` instead of a verification mismatch.
    #: attribute names of a decoder layer's norms (before attention, before the FFN) and the final norm
    layer_norm_attrs: ClassVar[tuple[str, str]] = ("input_layernorm", "post_attention_layernorm")
    final_norm_attr: ClassVar[str] = "norm"
    #: attention projection names (q, k, v, o) of the attention module
    projection_names: ClassVar[tuple[str, str, str, str]] = ("q_proj", "k_proj", "v_proj", "o_proj")
    #: norm the decoder export writes: "rms" (HF RMSNorm: x * rsqrt(mean(x^2) + eps) * weight)
    norm_kind: ClassVar[str] = "rms"

    @classmethod
    def layer_norms(cls, layer: Any) -> tuple[Any, Any]:
        return tuple(getattr(layer, a) for a in cls.layer_norm_attrs)  # type: ignore[return-value]

    @classmethod
    def final_norm(cls, model: Any) -> Any:
        return getattr(cls.language_model(model), cls.final_norm_attr)

    @classmethod
    def attention_projections(cls, attn: Any) -> tuple[Any, Any, Any, Any]:
        """(q, k, v, o) ``nn.Linear`` modules; biases are read from them when present."""
        return tuple(getattr(attn, n) for n in cls.projection_names)  # type: ignore[return-value]

    @classmethod
    def attention_scale(cls, attn: Any) -> float:
        from rlens import hf_compat

        return hf_compat.attention_scaling(attn)

    @classmethod
    def rope(cls, model: Any) -> RopeSpec:
        """The rotary tables' inputs: inverse frequencies, amplitude scaling and, for M-RoPE, the
        per-axis frequency sections (positions come as [3, B, S])."""
        import numpy as np

        from rlens import hf_compat

        lm = cls.language_model(model)
        inv_freq = hf_compat.rotary_inv_freq(lm).detach().to("cpu").float().numpy().astype(np.float32)
        section = hf_compat.mrope_section(lm) if cls.rope_kind == "mrope" else None
        return RopeSpec(inv_freq, hf_compat.rotary_attention_scaling(lm), section)

    @classmethod
    def layer_extras(cls, layer: Any) -> tuple[str, ...]:
        """Per-layer ops beyond the Llama shape that this model has (q/k norm, sliding window).
        The exporter writes none of them yet and refuses a model that has any."""
        attn = cls.attention(layer)
        extras = [n for n in ("q_norm", "k_norm") if getattr(attn, n, None) is not None]
        if getattr(attn, "sliding_window", None):
            extras.append("sliding_window")
        return tuple(extras)

    @classmethod
    def check_exportable(cls, model: Any) -> None:
        """Raise :class:`ModelError` for a decoder the export would get wrong."""
        extras = sorted({e for layer in cls.decoder_layers(model) for e in cls.layer_extras(layer)})
        if cls.norm_kind != "rms" or extras:
            raise ModelError(f"{cls.name}: the decoder export writes RMSNorm Llama-shaped layers; this model has "
                             f"norm {cls.norm_kind!r} and per-layer ops {extras or 'none'} (override the "
                             "family's decoder export hooks to support them)")


@dataclass(frozen=True)
class RopeSpec:
    """What the exporter needs to build the rotary tables (see :meth:`Family.rope`)."""

    inv_freq: Any  # numpy float32 [D/2]
    attention_scaling: float = 1.0
    mrope_section: tuple[int, ...] | None = None


def _span_of_row(row: Any, visual_ids: tuple[int, ...]) -> VisualSpan:
    import numpy as np

    pos = np.flatnonzero(np.isin(row, np.asarray(visual_ids)))
    if pos.size == 0:
        return NO_SPAN
    start, stop = int(pos[0]), int(pos[-1]) + 1
    if pos.size != stop - start:
        gaps = int(np.count_nonzero(np.diff(pos) > 1))
        raise InputError(
            f"the sequence has {gaps + 1} separated visual spans (visual tokens at {start}..{stop - 1} "
            "with text in between); rlens v1 supports one contiguous visual span per sequence "
            "(one image, no tile separators)"
        )
    return VisualSpan(start, stop - start)


def merged_patches(height: int, width: int, patch: int, merge: int = 1) -> int:
    """Tokens of a ``height x width`` image cut into ``patch`` squares, merged ``merge x merge``."""
    return math.ceil(height / patch) * math.ceil(width / patch) // (merge * merge)


def expand_image_marker(text: str, image_token: str, n_visual: int, expansion: str = "{visual}",
                        tokens: dict[str, str] | None = None) -> str:
    """Replace the one image slot (``image_token``) of a rendered chat prompt by the visual block."""
    count = text.count(image_token)
    if count != 1:
        raise InputError(f"the prompt has {count} image slots ({image_token!r}); rlens v1 takes exactly one image")
    block = expansion.format(visual=image_token * n_visual, **(tokens or {}))
    return text.replace(image_token, block)


def image_features_module(model: Any, names: list[str]) -> Any:
    """The model's own ``get_image_features`` as a module of positional inputs (torch, lazily)."""
    import torch

    from rlens import hf_compat

    class ImageFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            out = hf_compat.image_features(self.model, **dict(zip(names, args)))
            feats = getattr(out, "pooler_output", out)
            if isinstance(feats, (list, tuple)):
                feats = torch.cat(list(feats), 0)
            return feats.reshape(-1, feats.shape[-1])

    return ImageFeatures().eval()
