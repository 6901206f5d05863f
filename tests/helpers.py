"""Helpers shared by the tests (plain functions; fixtures live in conftest.py). Tests import this
module, never another test module, conftest or a benchmark script."""

from __future__ import annotations

import numpy as np

from rlens.presets import PRESETS

PRESET_NAMES = list(PRESETS)

# SmolVLM2(-500M-Video-Instruct)'s preprocessor_config.json as its checkpoint ships it
SMOLVLM2_PREPROCESSOR = {
    "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True, "do_rescale": True,
    "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SmolVLMImageProcessor",
    "image_std": [0.5, 0.5, 0.5], "max_image_size": {"longest_edge": 512}, "processor_class": "SmolVLMProcessor",
    "resample": 1, "rescale_factor": 1 / 255, "size": {"longest_edge": 2048},
    "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 512}}}


def sample_image(seed: int = 0, size: tuple[int, int] = (90, 120)):
    """A deterministic random RGB PIL image of ``size`` (height, width)."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[0], size[1], 3) * 255).astype("uint8"))


def hf_processor(folder):
    """The processor class named in ``folder/processor_config.json``, built from the folder's files,
    without its video processor (video processors need torchvision, which this environment cannot
    load; images never reach them)."""
    import inspect
    import json

    import transformers

    cfg = json.loads((folder / "processor_config.json").read_text())
    cls = getattr(transformers, cfg.pop("processor_class"))
    if "video_processor" in inspect.signature(cls.__init__).parameters:

        class ImagesOnly(cls):  # ProcessorMixin takes its sub-processors from __init__'s signature
            def __init__(self, image_processor, tokenizer, chat_template=None, **kwargs):
                super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

            if cls.__name__ == "SmolVLMProcessor":
                # Its override only adds video defaults read from the (absent) video processor
                # (num_frames, fps) and a video chat template; images take ProcessorMixin's path.
                def apply_chat_template(self, conversation, **kwargs):
                    return transformers.ProcessorMixin.apply_chat_template(self, conversation, **kwargs)

        cls = ImagesOnly
    return cls(image_processor=transformers.AutoImageProcessor.from_pretrained(str(folder)),
               tokenizer=transformers.AutoTokenizer.from_pretrained(str(folder)),
               chat_template=(folder / "chat_template.jinja").read_text(), **cfg)


def hf_inputs(proc, image, prompt, **processor_kwargs):
    """``apply_chat_template(..., tokenize=True)`` of one image + ``prompt`` (numpy tensors)."""
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
    return proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                    return_tensors="np", processor_kwargs=processor_kwargs or None)


def ort_session(model):
    """An ONNX Runtime CPU session of an in-memory ModelProto."""
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def hf_greedy(loaded, prompt, max_new_tokens: int, eos: int) -> list[int]:
    """Hugging Face ``generate`` (greedy) on exactly the runtime's input ids and pixels."""
    import torch

    proc = {k: v for k, v in prompt.pixels.processed.items() if k != "num_patches"}
    inputs = {"input_ids": prompt.input_ids, **loaded.family.extra_text_inputs(prompt.input_ids, loaded.config),
              **proc}
    inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    with torch.no_grad():
        out = loaded.model.generate(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]),
                                    max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                    pad_token_id=eos)
    return out[0, prompt.input_ids.shape[1]:].tolist()


def until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def reduction_plans(info):
    """Plans the decoder-export tests share: none, static (hollow + kept FFN units at both ends), dynamic."""
    from rlens.plan import LayerPlan, Plan

    m, n = info.intermediate_size, info.num_layers
    static = Plan(model=info, layers=(LayerPlan(0, hollow_window=4, ffn_keep=32, ffn_indices=tuple(range(3, 99, 3))),
                                      LayerPlan(n - 1, hollow_window=3, ffn_keep=48,
                                                ffn_indices=tuple(range(m - 48, m))),
                                      LayerPlan(1, hollow_window=5)))
    dynamic = Plan(model=info, ffn_mode="dynamic", ffn_probes=4,
                   layers=tuple(LayerPlan(i, hollow_window=3, ffn_keep=32) for i in range(n)))
    return {"none": Plan(model=info), "static": static, "dynamic": dynamic}
