"""Prompt + image -> model inputs, from a folder of processor files. Numpy only (no torch), so
the runtime shares it: tokenizers for text, jinja2 for the chat template, ``rlens.imageproc``
(numpy + PIL) for pixels. tests/test_processor_parity.py checks the result against Hugging Face's
processor classes built from the same files.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlens.errors import InputError, ModelError
from rlens.families.base import Family, expand_image_marker

DEFAULT_MAX_IMAGE_PIXELS = 1 << 25  # the runtime takes a bundle's own budget (manifest vision)
MAX_PROMPT_CHARS = 1 << 20


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
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises plain Exception for a malformed file
            raise ModelError(f"{tok_file} is not a tokenizers file: {str(e)[:200]}") from None
        self.chat_template = _read_chat_template(self.folder)
        self._template: Any = None
        self._image_processor: Any = None
        self._lock = threading.RLock()  # the tokenizer's encode_special_tokens flag and lazy loading
        tcfg = _read_json(self.folder / "tokenizer_config.json")
        _add_named_special_tokens(self.tokenizer, tcfg)
        eos = _content(tcfg.get("eos_token"))
        self.eos_token_id = self.tokenizer.token_to_id(eos) if isinstance(eos, str) and eos else None
        bos = _content(tcfg.get("bos_token"))
        self.bos_token = bos if isinstance(bos, str) and bos else None
        ids = visual_token_ids or family.visual_token_ids(config)
        self.image_token = self.tokenizer.id_to_token(int(ids[0]))
        if self.image_token is None:
            raise ModelError(f"{self.folder}: the tokenizer has no token for the image token id {ids[0]}")
        specials = tcfg.get("extra_special_tokens")
        specials = {k: _content(v) for k, v in specials.items()} if isinstance(specials, dict) else {}
        self.specials = {**family.expansion_tokens, **{k: v for k, v in specials.items() if isinstance(v, str)}}

    @property
    def image_processor(self) -> Any:
        """rlens' numpy + PIL image processor for the folder's config (never transformers, never code)."""
        with self._lock:
            if self._image_processor is None:
                from rlens.imageproc import load_image_processor

                self._image_processor = load_image_processor(self.folder)
            return self._image_processor

    def process_image(self, image: Any) -> dict[str, np.ndarray]:
        """The image processor's outputs for one image (numpy), called as the model's processor calls it;
        its refusals (e.g. aspect ratio) as :class:`InputError`."""
        try:
            out = self.image_processor(images=[image], return_tensors="np", **self.family.image_call_kwargs)
        except (ValueError, ZeroDivisionError, OverflowError) as e:
            size = getattr(image, "size", None)
            raise InputError(f"the image processor cannot take this image ({size[0]}x{size[1]}): {e}"
                             if size else f"the image processor cannot take this image: {e}") from None
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
        from jinja2 import TemplateError

        try:
            return self.template.render(messages=messages, add_generation_prompt=True)
        except (TemplateError, TypeError, ValueError, RecursionError) as e:
            raise ModelError(f"the chat template in {self.folder} fails: {type(e).__name__}: {str(e)[:200]}") from None

    def encode_prompt(self, prompt: str, n_visual: int) -> tuple[np.ndarray, str]:
        """``input_ids`` [1, S] of the chat prompt with the image slot expanded to ``n_visual``, and its text.

        As Hugging Face's processor does, the tokenizer adds its special tokens (e.g. a BOS) unless
        the rendered text already starts with the BOS token. The user's text is always text: a
        special or added token written in it (``<|im_end|>``, an image marker) is encoded as the
        characters it is made of, never as that token (as transformers' ``split_special_tokens``).
        Without such strings the ids are exactly those of encoding the whole rendered prompt.
        """
        check_prompt(prompt)
        sentinel = f"\ue000{secrets.token_hex(8)}\ue001"
        rendered = self.render(sentinel)
        if rendered.count(sentinel) != 1:
            raise ModelError(f"the chat template in {self.folder} does not place the user text exactly once")
        raw_before, raw_after = rendered.split(sentinel)
        real = self.render(prompt)  # the user text as the template writes it (a template may trim it)
        user = prompt
        if real.startswith(raw_before) and real.endswith(raw_after) and len(real) >= len(raw_before) + len(raw_after):
            user = real[len(raw_before):len(real) - len(raw_after)]
        expanded = expand_image_marker(rendered, self.image_token, n_visual, self.family.image_expansion, self.specials)
        before, after = expanded.split(sentinel)
        text = before + user + after
        add = not (self.bos_token and text.startswith(self.bos_token))
        with self._lock:
            if not any(t in user for t in self._added_tokens()):
                return np.asarray([self.tokenizer.encode(text, add_special_tokens=add).ids], dtype=np.int64), text
            ids = self.tokenizer.encode(before, add_special_tokens=False).ids + self.encode_text(user)
            ids += self.tokenizer.encode(after, add_special_tokens=False).ids
            ids = self._with_special_tokens(text, ids) if add else ids
        return np.asarray([ids], dtype=np.int64), text

    encode = encode_prompt

    def _with_special_tokens(self, text: str, ids: list[int]) -> list[int]:
        """``ids`` wrapped in the tokens the tokenizer's post-processor adds around ``text`` (BOS/EOS)."""
        enc = self.tokenizer.encode(text, add_special_tokens=True)
        seq = enc.sequence_ids
        head = next((i for i, s in enumerate(seq) if s is not None), len(seq))
        tail = next((i for i, s in enumerate(reversed(seq)) if s is not None), 0)
        return enc.ids[:head] + ids + (enc.ids[len(enc.ids) - tail:] if tail else [])

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain text: special/added token strings in it stay characters."""
        with self._lock:  # the flag is the tokenizer's: no other thread encodes meanwhile
            self.tokenizer.encode_special_tokens = True
            try:
                return self.tokenizer.encode(check_prompt(text), add_special_tokens=False).ids
            finally:
                self.tokenizer.encode_special_tokens = False

    def _added_tokens(self) -> list[str]:
        return [t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.content]

    def prepare(self, image: Any, prompt: str, max_pixels: int | None = None) -> Prepared:
        """Tokenise the chat prompt with the image's visual tokens expanded; preprocess pixels."""
        image = load_image(image, max_pixels)
        vision = self.process_image(image)
        n_visual = self.family.visual_tokens_from_pixels(self.config, vision)
        ids, text = self.encode_prompt(prompt, n_visual)
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


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be a string, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt has {len(prompt)} characters, over rlens's limit of {MAX_PROMPT_CHARS}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the prompt is not valid UTF-8 text (undecodable bytes in the argument?)") from None
    return prompt


def check_sequence_length(tokens: int, limit: int | None, what: str) -> None:
    """The one sequence-length rule of run, bench and calibrate: ``tokens`` <= the model's limit."""
    if limit is not None and tokens > limit:
        raise InputError(f"{what} is {tokens} tokens, over the model's limit of {limit} (max_position_embeddings)")


def apply_image_options(family: type[Family], proc_dir: Path, *, max_pixels: int | None = None,
                        max_tiles: int | None = None, image_splitting: bool = True) -> dict[str, int]:
    """Apply ``--max-pixels``/``--max-tiles``/``--no-image-splitting`` to the image processor config
    in ``proc_dir`` (rlens' own copy of the processor files, never the checkpoint's: the file the
    image processor is read from, processor_config.json's ``image_processor`` entry, else
    preprocessor_config.json); the resulting bounds. A config the family cannot take (Idefics3
    splitting left on) is refused here, before any long work."""
    from rlens.imageproc import read_image_processor_config

    cfg = read_image_processor_config(proc_dir)
    changed = family.image_options(family.lower_bounds(cfg, max_pixels, max_tiles), image_splitting)
    if changed is not cfg:
        nested = proc_dir / "processor_config.json"
        outer = json.loads(nested.read_text()) if nested.is_file() else {}
        if isinstance(outer.get("image_processor"), dict):
            nested.write_text(json.dumps(dict(outer, image_processor=changed), indent=2, sort_keys=True) + "\n")
        else:
            (proc_dir / "preprocessor_config.json").write_text(json.dumps(changed, indent=2, sort_keys=True) + "\n")
    return family.image_bounds(changed)


def load_image(image: Any, max_pixels: int | None = None) -> Any:
    """A PIL image (RGB, EXIF orientation applied) from a path or an image.

    Refused with :class:`InputError` before any pixel is decoded: a path that is not a regular file
    (FIFO, device, folder), an image over ``max_pixels`` (default 2**25; decompression bombs).
    16-bit and 32-bit integer images are scaled to 8 bits (x / 257), float images in [0, 1] by 255.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = int(max_pixels or DEFAULT_MAX_IMAGE_PIXELS)
    if isinstance(image, Image.Image):
        _check_pixels(image.size, limit, "the image")
        return _to_rgb(ImageOps.exif_transpose(image))
    try:
        path = Path(os.fspath(image))
        mode = os.stat(path).st_mode
    except (TypeError, ValueError) as e:
        raise InputError(f"cannot read image {image!r}: {e}") from None
    except OSError as e:
        raise InputError(f"cannot read image {image}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"cannot read image {path}: not a regular file (a folder, FIFO or device is not an image)")
    try:
        with warnings.catch_warnings(record=True):  # PIL's bomb warning: the budget check below decides
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(im.size, limit, str(path))
                return _to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read image {path}: over the image budget of {limit / 1e6:.1f} MP ({e})") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None


def probe_image(path: Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from an image file's header, with :func:`load_image`'s refusals; decodes nothing."""
    from PIL import Image, UnidentifiedImageError

    limit = int(max_pixels or DEFAULT_MAX_IMAGE_PIXELS)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InputError(f"cannot read image {path}: not a regular file (a folder, FIFO or device is not an image)")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(im.size, limit, str(path))
                return im.size
    except Image.DecompressionBombError as e:
        raise InputError(f"cannot read image {path}: over the image budget of {limit / 1e6:.1f} MP ({e})") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None


def _check_pixels(size: tuple[int, int], limit: int, name: str) -> None:
    w, h = size
    if w < 1 or h < 1 or w * h > limit:
        raise InputError(f"{name} is {w}x{h} = {w * h / 1e6:.1f} MP, over the image budget of {limit / 1e6:.1f} MP "
                         "(manifest vision.max_image_pixels); downscale it first")


def _to_rgb(im: Any) -> Any:
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        elif im.mode != "I" or (a.size and a.max() > 255):
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return im.convert("RGB")


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _add_named_special_tokens(tokenizer: Any, tcfg: dict[str, Any]) -> None:
    """Add the special tokens tokenizer_config.json names but tokenizer.json does not list as added
    tokens, as transformers' fast tokenizers do on load (``AddedToken(special=True,
    normalized=False)``; a string already in the vocabulary keeps its id): without this, such a token
    written by the chat template (``</s>``) would be encoded as its characters."""
    from tokenizers import AddedToken

    named = [_content(tcfg.get(k)) for k in SPECIAL_TOKEN_KEYS]
    extra = tcfg.get("extra_special_tokens") or tcfg.get("additional_special_tokens") or []
    named += [_content(v) for v in (extra.values() if isinstance(extra, dict) else extra)]
    have = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    missing = list(dict.fromkeys(t for t in named if isinstance(t, str) and t and t not in have))
    if missing:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])


def _content(token: Any) -> Any:
    """A special token's string (tokenizer configs store either the string or an AddedToken dict)."""
    return token.get("content") if isinstance(token, dict) else token


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file (``{}`` when absent); anything else is one :class:`ModelError`."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise ModelError(f"cannot read {path}: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def _read_chat_template(folder: Path) -> str:
    if (folder / "chat_template.jinja").is_file():
        try:
            return (folder / "chat_template.jinja").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"cannot read {folder / 'chat_template.jinja'}: {e}") from None
    for name in ("chat_template.json", "tokenizer_config.json", "processor_config.json"):
        tmpl = _read_json(folder / name).get("chat_template")
        if isinstance(tmpl, str):
            return tmpl
    raise ModelError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json)")
