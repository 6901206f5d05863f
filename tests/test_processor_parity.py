"""The runtime follows the model's own processor (issue 11): for every family, several image sizes
and prompts, the runtime's ``input_ids``, pixel inputs and visual-token count equal what Hugging
Face's processor class (named in the bundle's processor_config.json, built from the same files)
gives through ``apply_chat_template(..., tokenize=True)``.

The reference is the transformers processor class itself. Its video processor is left out: video
processors need torchvision, which this environment cannot load (torchvision's wheels do not match
the installed CPU torch); images never reach it.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from helpers import PRESET_NAMES, sample_image

SIZES = [(90, 120), (200, 60), (150, 220)]
PROMPTS = ["What is in the image?", "Describe the colours, then count the shapes <b>precisely</b>."]


def hf_processor(folder):
    """The processor class named in ``folder/processor_config.json``, built from the folder's files."""
    import transformers

    cfg = json.loads((folder / "processor_config.json").read_text())
    cls = getattr(transformers, cfg.pop("processor_class"))
    if "video_processor" in inspect.signature(cls.__init__).parameters:

        class ImagesOnly(cls):  # ProcessorMixin takes its sub-processors from __init__'s signature
            def __init__(self, image_processor, tokenizer, chat_template=None, **kwargs):
                super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        cls = ImagesOnly
    return cls(image_processor=transformers.AutoImageProcessor.from_pretrained(str(folder)),
               tokenizer=transformers.AutoTokenizer.from_pretrained(str(folder)),
               chat_template=(folder / "chat_template.jinja").read_text(), **cfg)


def hf_inputs(proc, image, prompt):
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
    return proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                    return_tensors="np")


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


def test_idefics3_image_splitting_is_refused_with_a_clear_error():
    from rlens.errors import ModelError
    from rlens.families import family_by_name

    fam = family_by_name("idefics3")
    with pytest.raises(ModelError, match="do_image_splitting"):
        fam.image_bounds({"do_image_splitting": True})
    assert fam.image_bounds({"do_image_splitting": False}) == {}
