"""Prompt + image -> model inputs, from a folder of processor files. Numpy only (no torch), so
the runtime shares it: tokenizers for text, jinja2 for the chat template, ``rlens.imageproc``
(numpy + PIL) for pixels. tests/test_processor_parity.py checks the result against Hugging Face's
processor classes built from the same files.
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
    """The checkpoint's own processor files: tokenizer, chat template, image processor.

    The image token is the tokenizer's string for the model's image token id (``visual_token_ids``,
    from the config or the bundle's manifest), so a checkpoint whose processor uses another image
    token is followed; the tokens around the visual block come from the tokenizer config's
    special tokens where it names them (InternVL's ``start_image_token``/``end_image_token``).
    """

    def __init__(self, folder: Path, family: type[Family], config: Any,
                 visual_token_ids: tuple[int, ...] | None = None) -> None:
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
        self.eos_token_id = self.tokenizer.token_to_id(_content(tcfg.get("eos_token"))) if tcfg.get("eos_token") else None
        self.bos_token = _content(tcfg.get("bos_token"))
        ids = visual_token_ids or family.visual_token_ids(config)
        self.image_token = self.tokenizer.id_to_token(int(ids[0]))
        if self.image_token is None:
            raise ModelError(f"{self.folder}: the tokenizer has no token for the image token id {ids[0]}")
        specials = tcfg.get("extra_special_tokens")
        self.specials = {**family.expansion_tokens,
                         **({k: _content(v) for k, v in specials.items()} if isinstance(specials, dict) else {})}

    @property
    def image_processor(self) -> Any:
        """rlens' numpy + PIL image processor for the folder's config (never transformers, never code)."""
        if self._image_processor is None:
            from rlens.imageproc import load_image_processor

            self._image_processor = load_image_processor(self.folder)
        return self._image_processor

    def process_image(self, image: Any) -> dict[str, np.ndarray]:
        """The image processor's output for one image, called as the model's processor calls it."""
        out = self.image_processor(images=[image], return_tensors="np", **self.family.image_call_kwargs)
        return {k: np.asarray(v) for k, v in out.items()}

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

    def encode(self, prompt: str, n_visual: int) -> tuple[np.ndarray, str]:
        """Token ids [1, S] of the rendered chat prompt with the image slot expanded to ``n_visual``.

        As Hugging Face's processor does, the tokenizer adds its special tokens (e.g. a BOS) unless
        the rendered text already starts with the BOS token.
        """
        text = expand_image_marker(self.render(prompt), self.image_token, n_visual, self.family.image_expansion,
                                   self.specials)
        add = not (self.bos_token and text.startswith(self.bos_token))
        ids = np.asarray([self.tokenizer.encode(text, add_special_tokens=add).ids], dtype=np.int64)
        return ids, text

    def prepare(self, image: Any, prompt: str) -> Prepared:
        """Tokenise the chat prompt with the image's visual tokens expanded; preprocess pixels."""
        image = load_image(image)
        vision = self.process_image(image)
        n_visual = self.family.visual_tokens_from_pixels(self.config, vision)
        ids, text = self.encode(prompt, n_visual)
        span = self.family.find_visual_span(ids, self.config)
        if span.length != n_visual:
            raise InputError(f"expected {n_visual} visual tokens in the prompt, found {span.length}")
        extra = self.family.extra_text_inputs(ids, self.config)
        return Prepared(ids, vision, extra, span.as_tuple(), text)

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


def _content(token: Any) -> Any:
    """A special token's string (tokenizer configs store either the string or an AddedToken dict)."""
    return token.get("content") if isinstance(token, dict) else token


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
