"""Prompt + image -> model inputs, from a folder of processor files. Numpy only (no torch), so
the runtime shares it: tokenizers for text, jinja2 for the chat template, the transformers
``*ImageProcessorPil`` classes (PIL + numpy) for pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlens.errors import InputError, ModelError
from rlens.families.base import Family, expand_image_marker


@dataclass
class Prepared:
    """Inputs of one prefill: ``input_ids`` [1, S] int64, the vision inputs, the visual span."""

    input_ids: np.ndarray
    vision: dict[str, np.ndarray]
    extra: dict[str, np.ndarray]
    visual_span: tuple[int, int]
    text: str


class Processor:
    def __init__(self, folder: Path, family: type[Family], config: Any) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.family = family
        self.config = config
        tok_file = self.folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelError(f"{self.folder} has no tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.chat_template = _read_chat_template(self.folder)
        self._template: Any = None
        self._image_processor: Any = None
        tcfg = _read_json(self.folder / "tokenizer_config.json")
        eos = tcfg.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        self.eos_token_id = self.tokenizer.token_to_id(eos) if eos else None

    @property
    def image_processor(self) -> Any:
        """rlens' numpy + PIL image processor for the folder's config (never transformers, never code)."""
        if self._image_processor is None:
            from rlens.imageproc import load_image_processor

            self._image_processor = load_image_processor(self.folder)
        return self._image_processor

    @property
    def template(self) -> Any:
        """The chat template compiled once (a sandboxed jinja2 template: no code from the file runs)."""
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(self.chat_template)
        return self._template

    def render(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.template.render(messages=messages, add_generation_prompt=True)

    def prepare(self, image: Any, prompt: str) -> Prepared:
        """Tokenise the chat prompt with the image's visual tokens expanded; preprocess pixels."""
        image = load_image(image)
        vision = dict(self.image_processor(images=[image], return_tensors="np"))
        n_visual = self.family.visual_tokens_from_pixels(self.config, vision)
        text = expand_image_marker(self.family, self.render(prompt), n_visual)
        ids = np.asarray([self.tokenizer.encode(text, add_special_tokens=False).ids], dtype=np.int64)
        span = self.family.find_visual_span(ids, self.config)
        if span.length != n_visual:
            raise InputError(f"expected {n_visual} visual tokens in the prompt, found {span.length}")
        extra = self.family.extra_text_inputs(ids, self.config)
        return Prepared(ids, {k: np.asarray(v) for k, v in vision.items()}, extra, span.as_tuple(), text)

    def model_inputs(self, prepared: Prepared) -> dict[str, np.ndarray]:
        """The keyword arguments of the Hugging Face model's forward (numpy)."""
        skip = {"num_patches"}
        vision = {k: v for k, v in prepared.vision.items() if k not in skip}
        return {"input_ids": prepared.input_ids, **prepared.extra, **vision}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load_image(image: Any) -> Any:
    """A PIL image (RGB) from a path or an image; unreadable files raise :class:`InputError`."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"cannot read image {image}: {e}") from None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_chat_template(folder: Path) -> str:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "tokenizer_config.json", "processor_config.json"):
        tmpl = _read_json(folder / name).get("chat_template")
        if isinstance(tmpl, str):
            return tmpl
    raise ModelError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json)")
