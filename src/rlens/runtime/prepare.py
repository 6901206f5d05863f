"""Image + prompt -> decoder inputs, from the bundle's processor files (no torch, no model config).

Pixels come from the bundle's image processor (the checkpoint's own, bounds possibly lowered at
export), at the image's own size: the family turns them into the vision graph's feeds
(``Family.vision_feeds``, numpy) and gives the token grid for M-RoPE (``Family.token_grid``); generic
code names no family. The number of visual tokens is the number of feature rows the vision graph
returns; the prompt's image marker is expanded to that many visual tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlens.errors import InputError
from rlens.families import family_by_name
from rlens.processing import Processor, load_image
from rlens.runtime.backends.base import TensorSpec
from rlens.runtime.manifest import Manifest


@dataclass
class Pixels:
    """Vision graph feeds for one image, the (t, h, w) token grid when the processor gives one."""

    feeds: dict[str, np.ndarray]
    grid: tuple[int, int, int] | None
    processed: dict[str, np.ndarray]  # every output of the image processor (e.g. image_grid_thw)


@dataclass
class Tokens:
    input_ids: np.ndarray  # [1, S] int64
    span: tuple[int, int]
    text: str


class Preparer:
    def __init__(self, manifest: Manifest, vision_inputs: dict[str, TensorSpec] | None) -> None:
        self.manifest = manifest
        self.family = family_by_name(manifest.family)
        self.processor = Processor(manifest.folder / "processor", self.family, None, manifest.visual_token_ids)
        self.vision_inputs = vision_inputs or {}

    @property
    def max_sequence(self) -> int | None:
        if self.manifest.max_sequence:
            return self.manifest.max_sequence
        name = "processor/tokenizer_config.json"
        if name not in self.manifest.files:
            return None
        try:
            limit = json.loads(self.manifest.path(name).read_bytes()).get("model_max_length")
        except (ValueError, AttributeError, RecursionError):
            return None
        return int(limit) if isinstance(limit, (int, float)) and 0 < limit < 10**8 else None

    # ---- pixels --------------------------------------------------------------------------------
    def pixels(self, image: Any) -> Pixels:
        """The image as the model's own processor prepares it, and the vision graph's feeds.

        The family turns the processor's output into feeds (Qwen2-VL: rotary/window indices of the
        image's own grid, numpy); shapes the vision graph cannot take are one :class:`InputError`.
        """
        img = load_image(image, self.manifest.max_image_pixels)
        out = self.processor.process_image(img)
        params = self.manifest.vision_params
        feeds = {k: v for k, v in self.family.vision_feeds(out, params).items() if k in self.vision_inputs}
        missing = sorted(set(self.vision_inputs) - set(feeds))
        if missing:
            raise InputError(f"the bundle's image processor gives no {missing} for the vision graph")
        for name, spec in self.vision_inputs.items():
            if feeds[name].dtype != spec.dtype:
                feeds[name] = feeds[name].astype(spec.dtype)
            fixed = [(g, w) for g, w in zip(feeds[name].shape, spec.shape) if isinstance(w, int) and w >= 0]
            if feeds[name].ndim != len(spec.shape) or any(g != w for g, w in fixed):
                got = {k: list(v.shape) for k, v in feeds.items()}
                want = {k: list(s.shape) for k, s in self.vision_inputs.items()}
                raise InputError(f"the image ({img.size[0]}x{img.size[1]}) processes to {got}, but this bundle's "
                                 f"vision graph takes {want}")
        return Pixels(feeds, self.family.token_grid(out, params), out)

    # ---- text ----------------------------------------------------------------------------------
    def tokens(self, prompt: str, n_visual: int) -> Tokens:
        ids, text = self.processor.encode_prompt(prompt, n_visual)
        span = visual_span(ids[0], self.manifest.visual_token_ids)
        if span[1] != n_visual:
            raise InputError(f"the prompt has {span[1]} visual tokens, the image gives {n_visual} features "
                             "(does the prompt itself contain image tokens?)")
        return Tokens(ids, span, text)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)


def visual_span(ids: np.ndarray, visual_ids: tuple[int, ...]) -> tuple[int, int]:
    """(start, length) of the one contiguous run of visual tokens; :class:`InputError` for several."""
    pos = np.flatnonzero(np.isin(ids, np.asarray(visual_ids, dtype=np.int64)))
    if pos.size == 0:
        return (0, 0)
    start, stop = int(pos[0]), int(pos[-1]) + 1
    if pos.size != stop - start:
        runs = int(np.count_nonzero(np.diff(pos) > 1)) + 1
        raise InputError(f"the sequence has {runs} separated visual spans (tokens {start}..{stop - 1} with text "
                         "in between); this bundle supports one contiguous visual span (one image)")
    return (start, stop - start)

