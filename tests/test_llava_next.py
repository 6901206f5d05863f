"""LLaVA-NeXT anyres (issue 11): the visual token count and layout are the model's own.

The image processor's pixels are compared with transformers' in test_imageproc.py, the runtime's
input ids with LlavaNextProcessor's and the greedy tokens with Hugging Face ``generate`` in
test_processor_parity.py / test_runtime.py (tiny-llava-next, three sizes selecting three grids).
Here: the count (``pack_index``) equals LlavaNextProcessor's at many sizes, for the tiny preset and
for the real checkpoints' 336-pixel tiles and pinpoints; vision.onnx equals ``get_image_features``
(which unpads and adds ``image_newline`` rows) at sizes that select every grid shape, including an
aspect ratio whose unpadding keeps no tile row; and, slow, a real-shaped processor end to end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import hf_greedy, sample_image, until_eos

REAL_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6 (mistral, vicuna)
# (height, width): tiny, square, wide, tall, very wide / tall (unpadding keeps few or no rows / columns)
SIZES = [(5, 7), (90, 120), (200, 60), (150, 220), (112, 112), (127, 333), (7, 300), (300, 7), (1000, 1500),
         (33, 1000), (1100, 6)]


def hf_processor(folder, pinpoints, tile):
    import transformers

    image = transformers.LlavaNextImageProcessorPil(size={"shortest_edge": tile},
                                                    crop_size={"height": tile, "width": tile},
                                                    image_grid_pinpoints=pinpoints)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), model_max_length=1 << 16)
    return transformers.LlavaNextProcessor(image_processor=image, tokenizer=tokenizer, patch_size=14,
                                           vision_feature_select_strategy="default", num_additional_image_tokens=1)


@pytest.mark.parametrize("tile, pinpoints", [(56, None), (336, REAL_PINPOINTS)], ids=["tiny", "real-336"])
def test_visual_token_count_equals_the_processor(tile, pinpoints, tmp_path):
    from rlens.families.llava import pack_index
    from rlens.models import load_model

    loaded = load_model("tiny-llava-next")
    loaded.save_processor(tmp_path)
    pinpoints = pinpoints or loaded.config.image_grid_pinpoints
    params = {"image_size": tile, "patch_size": 14, "grid_pinpoints": pinpoints}
    hf = hf_processor(tmp_path, pinpoints, tile)
    counts = set()
    for i, size in enumerate(SIZES):
        out = hf(images=[sample_image(seed=i, size=size)], text="<image>", return_tensors="np")
        want = int(np.count_nonzero(out["input_ids"] == 259))
        got = pack_index(size, params, patches=out["pixel_values"].shape[1])
        assert got.shape == (want,), size
        newline = out["pixel_values"].shape[1] * (tile // 14) ** 2  # the row after every patch's features
        features = got[got != newline]
        assert len(np.unique(features)) == len(features) and features.max() < newline  # each feature once
        counts.add(want)
    assert len(counts) >= 8, counts


def test_pack_index_layout():
    """Base features first, then the grid rows of the kept tiles, each row ended by the newline row."""
    from rlens.families.llava import pack_index

    params = {"image_size": 56, "patch_size": 14, "grid_pinpoints": [[56, 112], [112, 56]]}
    idx = pack_index((50, 100), params)  # -> 1x2 tiles of 4x4 features; 50/100 is 8 rows of 8 -> no padding
    newline = 3 * 16
    assert idx[:16].tolist() == list(range(16))
    rows = idx[16:].reshape(4, 9)
    assert (rows[:, -1] == newline).all()
    assert rows[0, :8].tolist() == [16, 17, 18, 19, 32, 33, 34, 35]  # tile 1's first row, then tile 2's
    assert rows[3, :8].tolist() == [28, 29, 30, 31, 44, 45, 46, 47]
    wide = pack_index((20, 100), params)  # 20/100 of 8 columns -> 2 rows kept (rows 1..2)
    assert wide[16:].reshape(-1, 9)[:, 0].tolist() == [20, 24]


def test_vision_graph_equals_get_image_features(make_bundle):
    """The bundle's vision.onnx (through the runtime) against Hugging Face's get_image_features on
    the same pixels, at sizes selecting the 2x3, 3x1, 3x3 and 1x2 grids and a 7x300 image whose
    unpadding keeps no tile row (base features only)."""
    import torch

    from rlens import hf_compat
    from rlens.runtime import Session

    loaded, bundle = make_bundle("tiny-llava-next")
    patches = set()
    with Session.from_bundle(bundle) as sess:
        for i, size in enumerate([(90, 120), (200, 60), (150, 220), (50, 110), (7, 300)]):
            prompt = sess.prepare(sample_image(seed=i, size=size), "Hi")
            proc = prompt.pixels.processed
            with torch.no_grad():
                want = hf_compat.image_features(loaded.model, pixel_values=torch.from_numpy(proc["pixel_values"]),
                                                image_sizes=torch.from_numpy(proc["image_sizes"])).pooler_output
            want = torch.cat(list(want)).numpy()
            got = prompt.features
            assert got.shape == want.shape == (prompt.tokens.span[1], 64), size
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=str(size))
            patches.add(proc["pixel_values"].shape[1])
        axes = sess.manifest.raw["vision"]["axes"]
    assert patches == {7, 4, 10, 3}
    assert axes == {"patches": [3, 10], "visual": [16, 16 + 12 * 13]}


def test_tensorrt_vision_profile_follows_the_axes(make_bundle):
    """The vision engine's profile: 3..10 patches (2..9 tiles + base) and 16..172 pack_index rows."""
    from rlens.engine.profiles import vision_profile

    _, bundle = make_bundle("tiny-llava-next")
    manifest = json.loads((bundle / "manifest.json").read_text())
    shapes = vision_profile(manifest).shapes
    assert shapes["pixel_values"][0] == (3, 3, 56, 56) and shapes["pixel_values"][2] == (10, 3, 56, 56)
    assert shapes["pack_index"][0] == (16,) and shapes["pack_index"][2] == (172,)
    assert manifest["vision"]["params"]["grid_pinpoints"] == [[56, 112], [112, 56], [112, 168], [168, 56], [168, 168]]


@pytest.mark.slow
def test_real_shaped_processor_end_to_end(tmp_path):
    """A checkpoint directory with the real 336-pixel tiles and pinpoints (a 336/14 CLIP tower, tiny
    widths): the export records the real bounds, and a large image (2x2 tiles + base, ~2.5k visual
    tokens) generates Hugging Face's greedy tokens."""
    import transformers

    from rlens.export import ExportConfig, bundle_from_plan
    from rlens.models import load_model
    from rlens.plan import empty_plan
    from rlens.presets import PRESETS, build_model
    from rlens.runtime import Session

    preset = PRESETS["tiny-llava-next"]
    model = build_model(preset)
    cfg = model.config.to_dict()
    cfg["vision_config"]["image_size"] = 336
    cfg["image_grid_pinpoints"] = REAL_PINPOINTS
    cfg["text_config"]["max_position_embeddings"] = 4096
    model = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig.from_dict(cfg)).eval()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(str(ckpt))
    load_model("tiny-llava-next").save_processor(ckpt)
    proc = json.loads((ckpt / "preprocessor_config.json").read_text())
    proc.update(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=REAL_PINPOINTS)
    (ckpt / "preprocessor_config.json").write_text(json.dumps(proc))
    tok = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps(dict(tok, model_max_length=4096)))
    loaded = load_model(str(ckpt))
    out = bundle_from_plan(loaded, empty_plan(loaded.info()), tmp_path / "bundle", ExportConfig())
    with Session.from_bundle(out) as sess:
        vision = sess.manifest.raw["vision"]
        assert vision["bounds"] == {"min_tiles": 2, "max_tiles": 4}
        assert vision["axes"] == {"patches": [3, 5], "visual": [576, 576 + 48 * 49]}
        prompt = sess.prepare(sample_image(size=(800, 1000)), "What is in the image?")
        assert prompt.pixels.processed["pixel_values"].shape[:2] == (1, 5)
        assert prompt.tokens.span[1] == 576 + 38 * 49  # 2x2 tiles, 48 rows unpadded to 38, + newlines
        got = list(sess.generate_ids(prompt, 4))
        eos = int(sess.manifest.eos_token_id)
    assert got == until_eos(hf_greedy(loaded, prompt, 4, eos), eos)


def test_what_rlens_cannot_pack_is_one_clear_error():
    """``full`` feature selection (transformers' own packing fails on it too), a processor whose
    pinpoints disagree with the model's, and pixels cut on another grid: each one clear error."""
    from rlens.errors import InputError, ModelError
    from rlens.families.llava import LlavaNext
    from rlens.presets import PRESETS, build_config

    cfg = build_config(PRESETS["tiny-llava-next"])
    params = LlavaNext.vision_params(cfg)
    with pytest.raises(ModelError, match="must agree"):
        LlavaNext.vision_axes(params, {"min_tiles": 2, "max_tiles": 4})
    seven = {"pixel_values": np.zeros((1, 7, 3, 56, 56), np.float32), "image_sizes": np.asarray([[200, 60]])}
    with pytest.raises(InputError, match="7 patches.*give 4"):
        LlavaNext.vision_feeds(seven, params)
    cfg.vision_feature_select_strategy = "full"
    with pytest.raises(ModelError, match="'full'"):
        LlavaNext.vision_params(cfg)
