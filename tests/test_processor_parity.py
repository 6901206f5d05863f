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

from conftest import PRESET_NAMES, sample_image
from test_runtime import make_bundle

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
def test_runtime_inputs_equal_the_hugging_face_processor(name, tmp_path_factory):
    from rlens.runtime import Session

    _, bundle = make_bundle(name, tmp_path_factory)
    hf = hf_processor(bundle / "processor")
    counts = set()
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
    if name in ("tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl"):
        assert len(counts) == len(SIZES), f"{name}: image size should change the visual token count: {counts}"


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
