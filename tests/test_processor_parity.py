"""The runtime follows the model's own processor (issue 11): for every family, several image sizes
and prompts, the runtime's ``input_ids``, pixel inputs and visual-token count equal what Hugging
Face's processor class (named in the bundle's processor_config.json, built from the same files)
gives through ``apply_chat_template(..., tokenize=True)``.

The reference is the transformers processor class itself. Its video processor is left out: video
processors need torchvision, which this environment cannot load (torchvision's wheels do not match
the installed CPU torch); images never reach it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import PRESET_NAMES, hf_inputs, hf_processor, sample_image

SIZES = [(90, 120), (200, 60), (150, 220)]
PROMPTS = ["What is in the image?", "Describe the colours, then count the shapes <b>precisely</b>."]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_runtime_inputs_equal_the_hugging_face_processor(name, make_bundle):
    from rlens.runtime import Session

    _, bundle = make_bundle(name)
    hf = hf_processor(bundle / "processor")
    counts, patches = set(), set()
    with Session.from_bundle(bundle) as sess:
        image_id = sess.manifest.visual_token_ids[0]
        for i, size in enumerate(SIZES):
            for prompt in PROMPTS:
                image = sample_image(seed=i, size=size)
                got = sess.prepare(image, prompt)
                want = hf_inputs(hf, image, prompt)
                assert got.input_ids.tolist() == want["input_ids"].tolist(), (size, prompt)
                pixel_keys = [k for k in want if k not in ("input_ids", "attention_mask", "mm_token_type_ids")]
                assert pixel_keys
                for key in pixel_keys:
                    np.testing.assert_array_equal(got.pixels.processed[key], want[key], err_msg=key)
                n_hf = int(np.count_nonzero(want["input_ids"] == image_id))
                assert got.tokens.span[1] == n_hf == got.features.shape[0]
                counts.add(n_hf)
                patches.add(want["pixel_values"].shape[:-3])
    if name in ("tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl", "tiny-llava-next"):
        assert len(counts) == len(SIZES), f"{name}: image size should change the visual token count: {counts}"
    if name == "tiny-llava-next":  # anyres: the three sizes select three grids (2x3, 3x1, 3x3 tiles + base)
        assert patches == {(1, 7), (1, 4), (1, 10)}, patches


def test_image_token_comes_from_the_checkpoint(tmp_path):
    """A checkpoint whose processor and config use another image token is followed (no per-family
    hard-coded token): the template emits it, the config's id names it, the runtime expands it."""
    from rlens.models import load_model
    from rlens.processing import Processor

    loaded = load_model("tiny-llava")
    loaded.save_processor(tmp_path)
    template = (tmp_path / "chat_template.jinja").read_text().replace("<image>", "<pad>")
    (tmp_path / "chat_template.jinja").write_text(template)
    pad_id = 260  # "<pad>" in the tiny LLaVA tokenizer
    proc = Processor(tmp_path, loaded.family, loaded.config, visual_token_ids=(pad_id,))
    ids, text = proc.encode("Hi", 16)
    assert proc.image_token == "<pad>" and int(np.count_nonzero(ids == pad_id)) == 16
    assert "<image>" not in text


def test_export_lowers_the_processor_bounds(tmp_path):
    """--max-pixels (Qwen2-VL) and --max-tiles (InternVL) lower the bundle's processor bounds: the
    manifest, the processor files and the images the runtime prepares all follow."""
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import empty_plan
    from rlens.runtime import Session

    image = sample_image(size=(150, 220))
    for name, kw, bound, most in (("tiny-qwen2-vl", {"max_pixels": 112 * 112}, {"max_pixels": 12544}, 16),
                                  ("tiny-internvl", {"max_tiles": 2}, {"max_tiles": 2}, 3 * 16)):
        loaded = load_model(name)
        out = bundle_from_plan(loaded, empty_plan(loaded.info()), tmp_path / name, ExportConfig(verify=False, **kw))
        with Session.from_bundle(out) as sess:
            vision = sess.manifest.raw["vision"]
            assert bound.items() <= vision["bounds"].items()
            assert all(n <= most for n in vision["per_image"])
            assert 0 < sess.prepare(image, "Hi").tokens.span[1] <= most
        hf = hf_processor(out / "processor")
        assert int(np.count_nonzero(hf_inputs(hf, image, "Hi")["input_ids"] == loaded.config.image_token_id)) <= most


@pytest.mark.parametrize("name, kw, message", [
    ("tiny-qwen2-vl", {"max_tiles": 2}, "--max-tiles does not apply"),
    ("tiny-qwen2-vl", {"max_pixels": 100}, "below the processor's min_pixels"),
    ("tiny-internvl", {"max_pixels": 10000}, "--max-pixels does not apply"),
    ("tiny-llava", {"max_pixels": 10000}, "--max-pixels does not apply"),
    ("tiny-llava", {"image_splitting": False}, "--no-image-splitting does not apply to llava"),
    ("tiny-qwen2-vl", {"image_splitting": False}, "--no-image-splitting does not apply to qwen2-vl"),
    ("tiny-llava-next", {"max_tiles": 2}, "--max-tiles does not apply"),
    ("tiny-llava-next", {"max_pixels": 10000}, "--max-pixels does not apply"),
])
def test_bad_bounds_are_one_clear_error(name, kw, message, tmp_path):
    from rlens.errors import InputError
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import empty_plan

    loaded = load_model(name)
    with pytest.raises(InputError, match=message):
        bundle_from_plan(loaded, empty_plan(loaded.info()), tmp_path / "b", ExportConfig(verify=False, **kw))
    assert list(tmp_path.iterdir()) == []


def _rlens(*args):
    return subprocess.run([sys.executable, "-m", "rlens.cli.main", *map(str, args)], capture_output=True, text=True)


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def splitting_checkpoint(tmp_path_factory):
    """A tiny Idefics3 save_pretrained directory whose image processor splits (SmolVLM's default):
    images resized to a 256 longest edge, cut into 128-pixel tiles + the whole image."""
    from rlens.models import load_model

    loaded = load_model("tiny-idefics3")
    ckpt = tmp_path_factory.mktemp("ckpt") / "idefics3"
    loaded.model.save_pretrained(str(ckpt))
    loaded.save_processor(ckpt)
    cfg = json.loads((ckpt / "preprocessor_config.json").read_text())
    cfg.update(do_image_splitting=True, size={"longest_edge": 256})
    (ckpt / "preprocessor_config.json").write_text(json.dumps(cfg))
    return loaded, ckpt


def test_image_splitting_is_refused_in_one_line_naming_the_flag(splitting_checkpoint, tmp_path):
    _, ckpt = splitting_checkpoint
    before = _digest(ckpt)
    r = _rlens("export", ckpt, "--out", tmp_path / "b", "--no-verify")  # (calibration: the in-process test below)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("rlens")]  # after the loading bar
    assert len(lines) == 1 and lines[0].startswith("rlens: error: ") and r.stderr.rstrip().endswith(lines[0])
    assert "--no-image-splitting" in lines[0] and "do_image_splitting" in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []
    assert _digest(ckpt) == before


@pytest.mark.slow
def test_no_image_splitting_exports_hugging_faces_unsplit_answers(splitting_checkpoint, tmp_path):
    """``--no-image-splitting``: the bundle's processor copy (never the checkpoint) has splitting
    off, the manifest says so, and the runtime gives the input ids, pixels and greedy tokens of
    Hugging Face's processor called with ``do_image_splitting=False`` and the model's generate."""
    import torch

    from rlens.runtime import Session

    loaded, ckpt = splitting_checkpoint
    before = _digest(ckpt)
    r = _rlens("export", ckpt, "--out", tmp_path / "b", "--no-image-splitting")
    assert r.returncode == 0, r.stderr
    assert _digest(ckpt) == before
    bundle = tmp_path / "b"
    assert json.loads((bundle / "processor" / "preprocessor_config.json").read_text())["do_image_splitting"] is False
    hf = hf_processor(ckpt)
    image_id = loaded.config.image_token_id
    with Session.from_bundle(bundle) as sess:
        assert sess.manifest.raw["vision"]["image_splitting"] is False
        eos = int(sess.manifest.eos_token_id)
        for i, size in enumerate(SIZES):
            image = sample_image(seed=i, size=size)
            split = hf_inputs(hf, image, PROMPTS[0])
            assert np.count_nonzero(split["input_ids"] == image_id) > 16  # the checkpoint as it is: tiles
            want = hf_inputs(hf, image, PROMPTS[0], do_image_splitting=False)
            got = sess.prepare(image, PROMPTS[0])
            assert got.input_ids.tolist() == want["input_ids"].tolist(), size
            np.testing.assert_array_equal(got.pixels.processed["pixel_values"], want["pixel_values"])
            inputs = {k: torch.from_numpy(np.asarray(want[k])) for k in ("input_ids", "attention_mask",
                                                                         "pixel_values", "pixel_attention_mask")}
            with torch.no_grad():
                out = loaded.model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=eos,
                                            pad_token_id=eos)
            hf_ids = out[0, want["input_ids"].shape[1]:].tolist()
            hf_ids = hf_ids[:hf_ids.index(eos) + 1] if eos in hf_ids else hf_ids
            assert list(sess.generate_ids(got, 12)) == hf_ids, size
            assert len(hf_ids) == 12 or hf_ids[-1] == eos


def test_calibration_follows_no_image_splitting(splitting_checkpoint):
    """Calibration reads a temporary copy of the processor files: with ``image_splitting=False``
    (rlens calibrate / rlens-export --no-image-splitting) the samples are unsplit (one span of 16);
    without it the splitting checkpoint is refused naming the flag."""
    from rlens.calibrate.data import builtin_calibration_set, encode_samples
    from rlens.errors import ModelError
    from rlens.models import load_model

    _, ckpt = splitting_checkpoint
    before = _digest(ckpt)
    loaded = load_model(str(ckpt))
    samples = builtin_calibration_set(2)
    with pytest.raises(ModelError, match="--no-image-splitting"):
        encode_samples(loaded, samples)
    encoded = encode_samples(loaded, samples, image_splitting=False)
    assert [e.visual_span[1] for e in encoded] == [16, 16]
    assert _digest(ckpt) == before


def test_special_tokens_named_only_in_tokenizer_config_are_tokens(tmp_path):
    """A special token that tokenizer_config.json names but tokenizer.json keeps only in its base
    vocabulary (not as an added token) is one token when the chat template writes it, as
    transformers' tokenizer makes it on load; before, rlens encoded it as its characters."""
    import json

    import transformers

    from rlens.models import load_model
    from rlens.processing import Processor

    loaded = load_model("tiny-llava")
    loaded.save_processor(tmp_path)
    tok = json.loads((tmp_path / "tokenizer.json").read_text())
    eos = next(a for a in tok["added_tokens"] if a["content"] == "</s>")
    tok["added_tokens"].remove(eos)
    tok["model"]["vocab"]["</s>"] = eos["id"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    template = (tmp_path / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.jinja").write_text(template.replace("{% if add_generation_prompt %}ASSISTANT:",
                                                                   "{% if add_generation_prompt %}</s>ASSISTANT:"))
    ids, text = Processor(tmp_path, loaded.family, loaded.config).encode("Hi there", 16)
    assert "</s>ASSISTANT:" in text
    want = transformers.AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"]
    assert ids[0].tolist() == want and eos["id"] in want
