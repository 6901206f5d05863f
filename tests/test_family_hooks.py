"""Families drive the decoder export (issue 13 item 1): a new Llama-shaped family is one file, and
a model with per-layer ops the exporter does not write fails with one clear error."""

from __future__ import annotations

import importlib.util
import sys

import onnxruntime as ort
import pytest
import torch
import transformers

from rlens.errors import ModelError
from rlens.export.decoder import decoder_model, geometry
from rlens.export.verify import check_decoder
from rlens.families import family_for_config
from rlens.models import LoadedModel
from rlens.plan import LayerPlan, Plan
from rlens.presets import get_preset

FAMILY_FILE = '''
from rlens.families import register
from rlens.families.base import Family, merged_patches


@register
class MistralVL(Family):
    name = "mistral-vl-test"
    architectures = ("MistralVLTestForConditionalGeneration",)
    model_types = ()
    model_class = "LlavaForConditionalGeneration"
    visual_token_attrs = ("image_token_id",)

    @classmethod
    def visual_tokens_per_image(cls, config, image_size=None):
        vc = config.vision_config
        return merged_patches(vc.image_size, vc.image_size, vc.patch_size)
'''


def _model(text_type: str, arch: str, **text_extra) -> tuple[transformers.PreTrainedModel, object]:
    cfg_dict = dict(get_preset("tiny-llava").config)
    cfg_dict["text_config"] = dict(cfg_dict["text_config"], model_type=text_type, **text_extra)
    cfg = transformers.LlavaConfig(**cfg_dict)
    cfg.architectures = [arch]
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(cfg).eval(), cfg


@pytest.fixture
def one_file_family(tmp_path):
    from rlens import families

    path = tmp_path / "mistral_vl_family.py"
    path.write_text(FAMILY_FILE)
    spec = importlib.util.spec_from_file_location("mistral_vl_family", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module.MistralVL
    finally:
        families._REGISTRY.pop("mistral-vl-test", None)
        sys.modules.pop("mistral_vl_family", None)


@pytest.mark.parametrize("ops", ["standard", "ort"])
def test_a_new_llama_shaped_family_is_one_file(one_file_family, ops):
    """A LLaVA-style model on a Mistral text decoder, declared by the file above and nothing else."""
    model, cfg = _model("mistral", "MistralVLTestForConditionalGeneration")
    fam = family_for_config(cfg)
    assert fam is one_file_family
    loaded = LoadedModel(model=model, family=fam, source="one-file family")
    info = loaded.info()
    plan = Plan(model=info, layers=(LayerPlan(1, hollow_window=4, ffn_keep=32, ffn_indices=tuple(range(32))),))
    sess = ort.InferenceSession(decoder_model(loaded, plan, ops=ops).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    cmp = check_decoder(sess, loaded, plan, geometry(loaded), steps=1)
    assert cmp.max_abs_diff <= 1e-4, cmp.per_output


def test_per_layer_ops_the_exporter_does_not_write_fail_clearly():
    """Qwen3's q/k norms are not in the Llama shape: one clear error, not a verification mismatch."""
    model, cfg = _model("qwen3", "LlavaForConditionalGeneration", head_dim=16)
    loaded = LoadedModel(model=model, family=family_for_config(cfg), source="qwen3 text")
    assert loaded.family.layer_extras(loaded.family.decoder_layers(model)[0]) == ("q_norm", "k_norm")
    with pytest.raises(ModelError, match=r"per-layer ops \['k_norm', 'q_norm'\]"):
        decoder_model(loaded, Plan(model=loaded.info()))
