"""rlens.imageproc against transformers' own image processors.

The reference is the ``*ImageProcessorPil`` class built from the same folder (transformers' PIL
backend, which AutoImageProcessor also picks where torchvision is absent); the torchvision
("default"/"fast") classes are compared where torchvision is installed. Folders come from the
tiny presets (``save_processor_files``, what ``LoadedModel.save_processor`` writes for a preset)
and from configs shaped like the real checkpoints' (their image bounds and tiling).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import SMOLVLM2_PREPROCESSOR
from rlens.errors import InputError, ModelError
from rlens.imageproc import load_image_processor, registered_types
from rlens.presets import PRESETS, save_processor_files

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Configs as the real checkpoints ship them (hub preprocessor_config.json contents).
REAL_CONFIGS = {
    "qwen2-vl-2b": {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                    "merge_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
                    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"},
    "llava-1.5": {"crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True,
                  "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
                  "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD,
                  "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
                  "size": {"shortest_edge": 336}},
    "clip-336-legacy": {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN,
                        "image_std": CLIP_STD, "resample": 3, "size": 336},
    "internvl3-hf": {"crop_size": None, "crop_to_patches": False, "data_format": "channels_first",
                     "default_to_square": True, "device": None, "disable_grouping": None, "do_center_crop": None,
                     "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                     "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "GotOcr2ImageProcessorFast",
                     "image_std": [0.229, 0.224, 0.225], "input_data_format": None, "max_patches": 12,
                     "min_patches": 1, "processor_class": "InternVLProcessor", "resample": 3,
                     "rescale_factor": 0.00392156862745098, "return_tensors": None,
                     "size": {"height": 448, "width": 448}},
    "smolvlm": {"do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
                "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                "image_processor_type": "Idefics3ImageProcessor", "image_std": [0.5, 0.5, 0.5],
                "max_image_size": {"longest_edge": 384}, "processor_class": "Idefics3Processor", "resample": 1,
                "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 1536}},
}
REAL_CONFIGS["llava-v1.6"] = {  # llava-hf/llava-v1.6-mistral-7b-hf
    "aspect_ratio_setting": "anyres", "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]], "image_mean": CLIP_MEAN,
    "image_processor_type": "LlavaNextImageProcessor", "image_std": CLIP_STD, "processor_class": "LlavaNextProcessor",
    "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}}
REAL_CONFIGS["smolvlm-no-split"] = dict(REAL_CONFIGS["smolvlm"], do_image_splitting=False)
REAL_CONFIGS["smolvlm2"] = SMOLVLM2_PREPROCESSOR  # SmolVLMImageProcessor, 2048 / 512 tiles
# (width, height): tiny, square, 3:1 wide, 1:3 tall, odd sizes, large
SIZES = [(5, 7), (224, 224), (600, 200), (200, 600), (333, 127), (1500, 1000)]
# The keyword arguments the model's own processor passes to its image processor.
CALL_KWARGS = {"GotOcr2ImageProcessor": [{}, {"crop_to_patches": True}]}


def _image(size, seed=0, mode="RGB"):
    rng = np.random.RandomState(seed + size[0] * 7 + size[1])
    channels = 4 if mode == "RGBA" else 3
    arr = (rng.rand(size[1], size[0], channels) * 255).astype("uint8")
    return Image.fromarray(arr, mode="RGBA" if channels == 4 else "RGB").convert(mode)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for name, preset in PRESETS.items():
        out[name] = tmp_path_factory.mktemp(name)
        save_processor_files(preset, out[name])
    for name, cfg in REAL_CONFIGS.items():
        out[name] = tmp_path_factory.mktemp(name)
        (out[name] / "preprocessor_config.json").write_text(json.dumps(cfg))
    return out


def _base_type(folder: Path) -> str:
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    name = cfg.get("image_processor_type") or cfg["feature_extractor_type"].replace("FeatureExtractor", "ImageProcessor")
    return name.removesuffix("Fast").removesuffix("Pil")


def _reference(folder: Path, backend: str = "Pil"):
    import transformers

    return getattr(transformers, _base_type(folder) + backend).from_pretrained(str(folder))


class _AmbiguousChannels(logging.Filter):
    """transformers infers the channel axis of its own [C, H, W] arrays and logs a warning when an
    edge of 1 or 3 pixels makes that ambiguous (it then assumes channels first, which is right).
    Only that one message of the reference is dropped; any other log record still fails the test."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("The channel dimension is ambiguous")


def run_reference(ref, images, **kwargs) -> dict:
    logger, flt = logging.getLogger("transformers.image_utils"), _AmbiguousChannels()
    logger.addFilter(flt)
    try:
        return {k: np.asarray(v) for k, v in ref(images=images, return_tensors="np", **kwargs).items()}
    finally:
        logger.removeFilter(flt)


def assert_same_output(mine: dict, ref, atol: float = 1e-6) -> None:
    ref = {k: np.asarray(v) for k, v in ref.items()}
    assert set(mine) == set(ref)
    for key, want in ref.items():
        got = mine[key]
        assert isinstance(got, np.ndarray), key
        assert got.shape == want.shape and got.dtype == want.dtype, (key, got.shape, got.dtype, want.shape, want.dtype)
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=key)


CASES = [(name, size) for name in [*PRESETS, *REAL_CONFIGS] for size in SIZES]


@pytest.mark.parametrize("name,size", CASES, ids=[f"{n}-{w}x{h}" for n, (w, h) in CASES])
def test_equals_transformers_pil_processor(folders, name, size):
    folder = folders[name]
    mine, ref = load_image_processor(folder), _reference(folder)
    image = _image(size)
    for kwargs in CALL_KWARGS.get(_base_type(folder), [{}]):
        out = mine(images=[image], return_tensors="np", **kwargs)
        assert_same_output(out, run_reference(ref, [image], **kwargs))


@pytest.mark.parametrize("name", [*PRESETS, *REAL_CONFIGS])
def test_equals_transformers_default_torchvision_processor(folders, name):
    """Where torchvision is installed, the default (torchvision) class: torchvision's resize is
    not PIL's, so pixels agree to interpolation error, everything else exactly."""
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        pytest.skip("torchvision is not installed: transformers' default/fast image processors cannot run here")
    folder = folders[name]
    mine, ref = load_image_processor(folder), _reference(folder, backend="")
    image = _image((333, 127))
    for kwargs in CALL_KWARGS.get(_base_type(folder), [{}]):
        got = mine(images=[image], return_tensors="np", **kwargs)
        want = run_reference(ref, [image], **kwargs)
        assert set(got) == set(want)
        for key in want:
            assert got[key].shape == want[key].shape and got[key].dtype == want[key].dtype, key
            if np.issubdtype(want[key].dtype, np.integer):
                np.testing.assert_array_equal(got[key], want[key])
            else:
                assert np.abs(got[key] - want[key]).mean() < 0.05, key


def _random_sizes(n=6, seed=7):
    rng = np.random.RandomState(seed)
    sizes = [(int(w), int(h)) for w, h in rng.randint(1, 700, size=(n, 2))]
    return sizes + [(1, 150), (150, 1), (1000, 5), (6, 1100), (448, 449), (895, 447)]


@pytest.mark.parametrize("name", [*PRESETS, *REAL_CONFIGS])
def test_equals_transformers_at_random_sizes_and_extreme_aspects(folders, name):
    folder = folders[name]
    mine, ref = load_image_processor(folder), _reference(folder)
    for size in _random_sizes():
        image = _image(size, seed=3)
        for kwargs in CALL_KWARGS.get(_base_type(folder), [{}]):
            assert_same_output(mine(images=[image], **kwargs), run_reference(ref, [image], **kwargs))


def test_several_images_in_one_call(folders):
    images = [_image((333, 127), 1), _image((200, 600), 2)]
    for name in ("tiny-qwen2-vl", "tiny-llava", "tiny-llava-next", "internvl3-hf", "smolvlm", "tiny-idefics3"):
        mine, ref = load_image_processor(folders[name]), _reference(folders[name])
        for kwargs in CALL_KWARGS.get(_base_type(folders[name]), [{}]):
            assert_same_output(mine(images=images, **kwargs), run_reference(ref, images, **kwargs))
    idefics_batches = [[images[0]], [images[1], images[0]]]  # two samples, padded to two images each
    mine, ref = load_image_processor(folders["smolvlm"]), _reference(folders["smolvlm"])
    assert_same_output(mine(images=idefics_batches), run_reference(ref, idefics_batches))


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA"])
def test_other_image_modes_convert_as_transformers_does(folders, mode):
    image = _image((120, 90), mode="RGBA")
    image.putalpha(Image.fromarray(np.tile(np.arange(120, dtype=np.uint8) * 2, (90, 1))))
    image = image.convert(mode)
    for name in ("tiny-qwen2-vl", "llava-1.5"):
        mine, ref = load_image_processor(folders[name]), _reference(folders[name])
        assert_same_output(mine(images=[image]), run_reference(ref, [image]))


def test_call_overrides_equal_transformers(folders):
    image = _image((600, 200))
    mine, ref = load_image_processor(folders["qwen2-vl-2b"]), _reference(folders["qwen2-vl-2b"])
    bounds = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64}
    want = run_reference(ref, [image], size=bounds)
    assert_same_output(mine(images=[image], size=bounds), want)
    assert_same_output(mine(images=[image], min_pixels=56 * 56, max_pixels=28 * 28 * 64), want)
    mine, ref = load_image_processor(folders["internvl3-hf"]), _reference(folders["internvl3-hf"])
    kwargs = {"crop_to_patches": True, "max_patches": 4, "min_patches": 2}
    assert_same_output(mine(images=[image], **kwargs), run_reference(ref, [image], **kwargs))


def test_attributes_the_callers_read(folders):
    qwen = load_image_processor(folders["qwen2-vl-2b"])
    assert (qwen.patch_size, qwen.merge_size, qwen.temporal_patch_size) == (14, 2, 2)
    assert (qwen.min_pixels, qwen.max_pixels) == (3136, 12845056)
    assert qwen.size == {"shortest_edge": 3136, "longest_edge": 12845056}
    assert qwen.config == REAL_CONFIGS["qwen2-vl-2b"]
    assert qwen.to_dict()["image_processor_type"] == "Qwen2VLImageProcessor"
    json.dumps(qwen.to_dict())
    intern = load_image_processor(folders["internvl3-hf"])
    assert (intern.size, intern.max_patches, intern.crop_to_patches) == ({"height": 448, "width": 448}, 12, False)
    ref = _reference(folders["tiny-qwen2-vl"])
    mine = load_image_processor(folders["tiny-qwen2-vl"])
    assert (mine.merge_size, mine.patch_size, dict(mine.size)) == (ref.merge_size, ref.patch_size, dict(ref.size))


def test_type_names_dispatch_to_one_processing(tmp_path):
    for base in ("Qwen2VLImageProcessor", "CLIPImageProcessor", "GotOcr2ImageProcessor", "Idefics3ImageProcessor",
                 "LlavaNextImageProcessor"):
        for name in (base, base + "Fast", base + "Pil"):
            assert name in registered_types()
            (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": name}))
            assert type(load_image_processor(tmp_path)).type_name == base


def test_nested_processor_config_as_transformers_5_saves_it(folders, tmp_path):
    import transformers
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(folders["tiny-llava"] / "tokenizer.json"))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    proc = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size=48),
                          tokenizer=tok, patch_size=14)
    proc.save_pretrained(str(tmp_path))
    assert not (tmp_path / "preprocessor_config.json").exists()
    assert "image_processor" in json.loads((tmp_path / "processor_config.json").read_text())
    image = _image((333, 127))
    want = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))(images=[image], return_tensors="np")
    assert_same_output(load_image_processor(tmp_path)(images=[image]), want)


def _write(folder: Path, name: str, data) -> None:
    (folder / name).write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.mark.parametrize("case", ["preprocessor", "processor", "nested"])
def test_auto_map_is_refused_and_no_code_runs(tmp_path, case):
    marker = tmp_path / "ran"
    _write(tmp_path, "custom_proc.py", f"open({str(marker)!r}, 'w').write('x')\n")
    auto = {"AutoImageProcessor": "custom_proc.CustomImageProcessor"}
    cfg = {"image_processor_type": "CLIPImageProcessor"}
    if case == "preprocessor":
        _write(tmp_path, "preprocessor_config.json", dict(cfg, auto_map=auto))
    elif case == "processor":
        _write(tmp_path, "preprocessor_config.json", cfg)
        _write(tmp_path, "processor_config.json", {"auto_map": {"AutoProcessor": "custom_proc.P"}})
    else:
        _write(tmp_path, "processor_config.json", {"image_processor": dict(cfg, auto_map=auto)})
    with pytest.raises(ModelError, match="auto_map"):
        load_image_processor(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("files,match", [
    ({}, "no preprocessor_config.json"),
    ({"preprocessor_config.json": "{not json"}, "not valid JSON"),
    ({"preprocessor_config.json": "[1, 2]"}, "JSON object"),
    ({"preprocessor_config.json": {"size": 3}}, "names no image_processor_type"),
    ({"preprocessor_config.json": {"image_processor_type": "SiglipImageProcessor"}}, "unsupported image processor"),
    ({"processor_config.json": {"image_processor": [1]}}, "not an object"),
    ({"preprocessor_config.json": {"image_processor_type": "CLIPImageProcessor", "size": {"w": 3}}}, "key sets"),
    ({"preprocessor_config.json": {"image_processor_type": "CLIPImageProcessor", "size": -4}}, "positive"),
    ({"preprocessor_config.json": {"image_processor_type": "CLIPImageProcessor", "resample": 9}}, "resample"),
    ({"preprocessor_config.json": {"image_processor_type": "CLIPImageProcessor", "image_std": [1, 0, 1]}}, "zero"),
    ({"preprocessor_config.json": {"image_processor_type": "CLIPImageProcessor", "image_mean": "x"}}, "image_mean"),
    ({"preprocessor_config.json": {"image_processor_type": "Qwen2VLImageProcessor", "merge_size": 0}}, "merge_size"),
    ({"preprocessor_config.json": {"image_processor_type": "Idefics3ImageProcessor", "max_image_size": 3}},
     "max_image_size"),
    ({"preprocessor_config.json": {"image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": [[336]]}},
     "image_grid_pinpoints"),
    ({"preprocessor_config.json": {"image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": []}},
     "image_grid_pinpoints"),
])
def test_bad_configs_are_one_model_error(tmp_path, files, match):
    for name, data in files.items():
        _write(tmp_path, name, data)
    with pytest.raises(ModelError, match=match) as info:
        load_image_processor(tmp_path)(images=[_image((64, 48))])
    assert "\n" not in str(info.value)


def test_bad_inputs(folders):
    qwen = load_image_processor(folders["qwen2-vl-2b"])
    with pytest.raises(InputError, match="aspect ratio"):
        qwen(images=[_image((2010, 10))])
    with pytest.raises(InputError, match="PIL image"):
        qwen(images=[np.zeros((10, 10, 3), np.uint8)])
    with pytest.raises(InputError, match="no image"):
        qwen(images=[])
    with pytest.raises(TypeError, match="unexpected keyword"):
        qwen(images=[_image((64, 48))], crop_to_patches=True)
    with pytest.raises(InputError, match="would be resized to 336x1008000"):  # CLIP: shortest edge 336 at 1:3000
        load_image_processor(folders["llava-1.5"])(images=[_image((1, 3000))])
    with pytest.raises(TypeError, match="numpy"):
        qwen(images=[_image((64, 48))], return_tensors="pt")


def test_importing_and_running_needs_neither_torch_nor_transformers(folders):
    code = textwrap.dedent(f"""
        import sys
        from PIL import Image
        import rlens.imageproc as ip
        proc = ip.load_image_processor({str(folders['tiny-qwen2-vl'])!r})
        out = proc(images=[Image.new("RGB", (64, 48))], return_tensors="np")
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "torchvision"))
        print(out["pixel_values"].shape, heavy)
        sys.exit(1 if heavy else 0)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
