"""InternVL2 checkpoints in OpenGVLab's own layout (``InternVLChatModel``: InternViT
``vision_model.*``, ``mlp1``, an InternLM2 or Qwen2 ``language_model``) load without remote code
into the native transformers classes, and give the logits OpenGVLab's own code gave.

The oracle is independent of rlens' mapping: tests/data/internvl_opengvlab/make_expected.py ran
OpenGVLab's modeling code once on the same seeded checkpoint and stored its logits (with the
weights' names and shapes) in ``<variant>.json``; no OpenGVLab code is in this repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data" / "internvl_opengvlab"
sys.path.insert(0, str(DATA))

from checkpoint import IMG_CONTEXT_ID, inputs, write_checkpoint  # noqa: E402


def _checkpoint(variant: str, folder: Path) -> dict:
    from rlens.presets import build_tokenizer_json, get_preset

    preset = get_preset("tiny-internvl")
    assert preset.token_id("<IMG_CONTEXT>") == IMG_CONTEXT_ID
    spec = json.loads((DATA / f"{variant}.json").read_text())
    write_checkpoint(spec, folder, build_tokenizer_json(preset))
    return spec


@pytest.mark.parametrize("variant", ["internlm2", "qwen2"])
def test_opengvlab_layout_matches_the_original_code(variant, tmp_path):
    from rlens.models import load_model

    spec = _checkpoint(variant, tmp_path / "ckpt")
    loaded = load_model(str(tmp_path / "ckpt"))  # trust_remote_code defaults to False
    assert type(loaded.model).__name__ == "InternVLForConditionalGeneration" and loaded.family.name == "internvl"
    ids, pixels = inputs()
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels)).logits[0]
    want = np.asarray(spec["expected"]["logits"])
    assert logits.shape == want.shape
    np.testing.assert_allclose(logits.numpy(), want, atol=1e-4, rtol=0)


def test_unmappable_weights_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    from rlens.errors import ModelError
    from rlens.models import load_model

    _checkpoint("qwen2", tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    state["vision_model.extra.weight"] = np.zeros(2, np.float32)
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(ModelError, match="vision_model.extra.weight"):
        load_model(str(tmp_path / "ckpt"))


def test_export_without_processor_files_is_one_clear_error(tmp_path):
    """OpenGVLab repositories preprocess images in their own Python code (no preprocessor_config.json):
    exporting a bundle needs the Hugging Face processor files (chat template, image processor), and
    says which is missing."""
    from rlens.errors import ModelError
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import empty_plan

    _checkpoint("qwen2", tmp_path / "ckpt")
    loaded = load_model(str(tmp_path / "ckpt"))
    with pytest.raises(ModelError, match="has no (chat template|preprocessor_config.json)"):
        bundle_from_plan(loaded, empty_plan(loaded.info()), tmp_path / "b", ExportConfig(verify=False))
    assert not (tmp_path / "b").exists()
