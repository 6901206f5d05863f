"""Calibration samples: the JSONL data file, the built-in set, and their encoding to model inputs.

A data file has one JSON object per line, ``{"image": path, "prompt": str, "answer": str}``
(``answer`` optional; image paths relative to the file). Every problem raises one
:class:`InputError` naming the file and line.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlens.errors import InputError
from rlens.processing import check_sequence_length, probe_image


@dataclass(frozen=True)
class CalibrationSample:
    image: Any  # a PIL image, or the path of one (decoded only when the sample is encoded)
    prompt: str
    answer: str | None = None
    source: str = ""  # "file.jsonl:3" or "builtin:3", for error messages


@dataclass
class Encoded:
    """One sample as decoder inputs. ``entry`` says which module the inputs are for: the
    top-level model (``"model"``) or the language model alone with ``inputs_embeds``."""

    inputs: dict[str, Any]
    visual_span: tuple[int, int]
    positions: tuple[int, ...]  # positions whose next-token distribution enters the divergence
    length: int
    entry: str = "model"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


# ---- the JSONL file --------------------------------------------------------------------------
def load_calibration_data(path: str | Path, max_samples: int | None = None) -> list[CalibrationSample]:
    """Read and check a JSONL calibration file, up to ``max_samples`` samples (the rest is not read).

    Image paths are checked now (they exist, are files); images are decoded only when encoded.
    """
    path = Path(path)
    samples: list[CalibrationSample] = []
    try:
        if not path.is_file():
            raise InputError(f"cannot read calibration data {path}: not a regular file")
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if max_samples is not None and len(samples) >= max_samples:
                    break
                if line.strip():
                    samples.append(_sample_from_line(path, number, line))
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise InputError(f"cannot read calibration data {path}: {reason}") from None
    if not samples:
        raise InputError(f"{path}: no calibration samples (the file has no JSON lines)")
    return samples


def _sample_from_line(path: Path, number: int, line: str) -> CalibrationSample:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, over-long integers, deep nesting
        raise InputError(f"{where}: not valid JSON ({getattr(e, 'msg', str(e))[:200]})") from None
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object {{\"image\": ..., \"prompt\": ...}}")
    unknown = set(row) - {"image", "prompt", "answer"}
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)} (expected image, prompt, answer)")
    image, prompt, answer = row.get("image"), row.get("prompt"), row.get("answer")
    if not isinstance(image, str) or not image:
        raise InputError(f"{where}: 'image' must be a path (string)")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: 'prompt' must be a non-empty string")
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise InputError(f"{where}: 'answer' must be a non-empty string when given")
    try:
        image_path = (path.parent / image) if not Path(image).is_absolute() else Path(image)
        found = image_path.is_file()
    except (OSError, ValueError) as e:
        raise InputError(f"{where}: bad image path {image!r}: {e}") from None
    if not found:
        raise InputError(f"{where}: image {image_path} not found (or not a regular file)")
    try:
        probe_image(image_path)  # the header only: a bad or oversized image fails now, naming its line
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return CalibrationSample(image_path, prompt, answer, where)


# ---- the built-in set ------------------------------------------------------------------------
_WORDS = ("INVOICE", "TOTAL 42", "EXIT", "Room 7B", "SALE -30%", "STOP", "Gate C12", "Hello rlens")
_SHAPES = ("circle", "square", "triangle")
_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "orange": (240, 150, 30)}


def builtin_calibration_set(n: int = 8, seed: int = 0) -> list[CalibrationSample]:
    """``n`` deterministic samples (text signs, bar charts, shapes) drawn with PIL; no download."""
    rng = np.random.RandomState(seed)
    makers = (_text_sample, _chart_sample, _shape_sample)
    return [
        _with_source(makers[i % len(makers)](rng, i), f"builtin:{i + 1}") for i in range(n)
    ]


def _with_source(s: CalibrationSample, source: str) -> CalibrationSample:
    return CalibrationSample(s.image, s.prompt, s.answer, source)


def _canvas(rng: np.random.RandomState) -> Any:
    from PIL import Image

    shade = tuple(int(v) for v in rng.randint(200, 256, size=3))
    return Image.new("RGB", (160, 120), shade)


def _text_sample(rng: np.random.RandomState, i: int) -> CalibrationSample:
    from PIL import ImageDraw

    im = _canvas(rng)
    word = _WORDS[int(rng.randint(len(_WORDS)))]
    d = ImageDraw.Draw(im)
    x, y = int(rng.randint(4, 40)), int(rng.randint(10, 80))
    d.rectangle([x - 3, y - 3, x + 8 * len(word) + 3, y + 14], outline=(0, 0, 0))
    d.text((x, y), word, fill=(0, 0, 0))
    answer = word if i % 2 == 0 else None
    return CalibrationSample(im, "What does the text in the image say?", answer)


def _chart_sample(rng: np.random.RandomState, i: int) -> CalibrationSample:
    from PIL import ImageDraw

    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    heights = rng.randint(10, 90, size=int(rng.randint(3, 6)))
    for k, h in enumerate(heights):
        x = 15 + 28 * k
        d.rectangle([x, 110 - int(h), x + 18, 110], fill=(40, 70, 220))
        d.text((x + 4, 112 - int(h) - 12), str(int(h)), fill=(0, 0, 0))
    d.line([10, 110, 155, 110], fill=(0, 0, 0))
    tallest = int(np.argmax(heights)) + 1
    answer = f"Bar {tallest}, with {int(heights.max())}." if i % 2 == 0 else None
    return CalibrationSample(im, "Which bar in the chart is the tallest, and what is its value?", answer)


def _shape_sample(rng: np.random.RandomState, i: int) -> CalibrationSample:
    from PIL import ImageDraw

    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    names = list(_COLORS)
    counts: dict[str, int] = {}
    for _ in range(int(rng.randint(2, 6))):
        shape = _SHAPES[int(rng.randint(len(_SHAPES)))]
        color = names[int(rng.randint(len(names)))]
        x, y, r = int(rng.randint(15, 145)), int(rng.randint(15, 105)), int(rng.randint(6, 14))
        box = [x - r, y - r, x + r, y + r]
        if shape == "circle":
            d.ellipse(box, fill=_COLORS[color])
        elif shape == "square":
            d.rectangle(box, fill=_COLORS[color])
        else:
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=_COLORS[color])
        counts[shape] = counts.get(shape, 0) + 1
    answer = ", ".join(f"{v} {k}{'s' if v > 1 else ''}" for k, v in sorted(counts.items()))
    return CalibrationSample(im, "How many shapes of each kind are in the picture?",
                             answer if i % 2 == 0 else None)


# ---- encoding --------------------------------------------------------------------------------
def encode_samples(loaded: Any, samples: list[CalibrationSample], *, image_splitting: bool = True) -> list[Encoded]:
    """Tokenise and preprocess every sample with the model's processor files (a temporary copy;
    ``image_splitting=False``: with Idefics3/SmolVLM image splitting off, as the export's
    ``--no-image-splitting`` makes the bundle)."""
    from rlens.processing import Processor, apply_image_options

    if not samples:
        raise InputError("no calibration samples")
    with tempfile.TemporaryDirectory(prefix="rlens-calib-") as tmp:
        loaded.save_processor(Path(tmp))
        apply_image_options(loaded.family, Path(tmp), image_splitting=image_splitting)
        proc = Processor(Path(tmp), loaded.family, loaded.config)
        return [_encode(proc, loaded, s) for s in samples]


def _encode(proc: Any, loaded: Any, sample: CalibrationSample) -> Encoded:
    import torch

    try:
        prepared = proc.prepare(sample.image, sample.prompt)
    except InputError as e:
        raise InputError(f"{sample.source}: {e}") from None
    start, length = prepared.visual_span
    if length == 0:
        raise InputError(f"{sample.source}: the prompt has no image slot (no visual tokens)")
    ids = prepared.input_ids
    n_answer = 0
    if sample.answer:
        answer_ids = proc.encode_text(sample.answer)
        n_answer = len(answer_ids)
        ids = np.concatenate([ids, np.asarray([answer_ids], dtype=np.int64)], axis=1)
        prepared.input_ids = ids
        prepared.extra = loaded.family.extra_text_inputs(ids, loaded.config)
    seq = int(ids.shape[1])
    limit = getattr(loaded.config.get_text_config(), "max_position_embeddings", None)
    check_sequence_length(seq, int(limit) if limit else None, f"{sample.source}: prompt + image + answer")
    positions = tuple(range(seq - n_answer - 1, seq - 1)) if n_answer else tuple(range(start + length, seq))
    inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in proc.model_inputs(prepared).items()}
    return Encoded(inputs, (start, length), positions, seq, "model", sample.source)
