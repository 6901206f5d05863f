"""Dynamic resolution at the processor's real bounds (issue 11): a Qwen2.5-VL-shaped checkpoint
directory whose processor has Qwen2-VL's shipped min/max pixels (3136 .. 12845056) exports once and
generates Hugging Face's greedy tokens for a large image (~1.7k visual tokens, the paper's range),
windowed vision attention included. The weights are the tiny preset's (layer sizes are not what
this test is about); the image bounds, grid and token counts are the real ones.
"""

from __future__ import annotations

import json

import pytest

from helpers import hf_greedy, sample_image, until_eos

REAL = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}


@pytest.mark.slow
def test_large_image_at_the_real_processor_bounds(tmp_path):
    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import empty_plan
    from rlens.runtime import Session

    preset = load_model("tiny-qwen2.5-vl")
    ckpt = tmp_path / "ckpt"
    preset.model.save_pretrained(str(ckpt))
    preset.save_processor(ckpt)
    cfg = json.loads((ckpt / "preprocessor_config.json").read_text())
    cfg["size"] = {"shortest_edge": REAL["min_pixels"], "longest_edge": REAL["max_pixels"]}
    (ckpt / "preprocessor_config.json").write_text(json.dumps(cfg))
    loaded = load_model(str(ckpt))
    out = bundle_from_plan(loaded, empty_plan(loaded.info()), tmp_path / "bundle", ExportConfig())
    with Session.from_bundle(out) as sess:
        assert sess.manifest.raw["vision"]["bounds"] == REAL
        assert sess.manifest.raw["vision"]["axes"]["merged_patches"] == [1, 16384]
        prompt = sess.prepare(sample_image(size=(1288, 1008)), "What is in the image?")
        assert prompt.pixels.grid == (1, 46, 36) and prompt.tokens.span[1] == 1656
        got = list(sess.generate_ids(prompt, 4))
        eos = int(sess.manifest.eos_token_id)
    assert got == until_eos(hf_greedy(loaded, prompt, 4, eos), eos)
