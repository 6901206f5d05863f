"""Resolve a MODEL argument (preset name, local directory, hub id) to a loaded model + family.

Loading a local directory never runs remote code unless ``trust_remote_code=True``, and weights
load from safetensors only (no pickle).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlens.configs import LOAD_DTYPES
from rlens.errors import ModelError
from rlens.families import Family, family_for_config
from rlens.plan import ModelInfo
from rlens.presets import Preset, build_model, get_preset, is_preset, save_processor_files

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class LoadedModel:
    model: Any
    family: type[Family]
    source: str
    preset: Preset | None = None

    @property
    def config(self) -> Any:
        return self.model.config

    def info(self) -> ModelInfo:
        return model_info(self.model, self.family)

    def save_processor(self, out: Path) -> None:
        """Write the processor files (tokenizer, chat template, image processor) to ``out``."""
        if self.preset is not None:
            save_processor_files(self.preset, out)
            return
        src = Path(self.source)
        out.mkdir(parents=True, exist_ok=True)
        names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "chat_template.json", "preprocessor_config.json", "processor_config.json", "generation_config.json")
        found = False
        for name in names:
            if (src / name).is_file():
                (out / name).write_bytes((src / name).read_bytes())
                found = found or name == "tokenizer.json"
        if not found:
            raise ModelError(f"{src} has no tokenizer.json; rlens needs a fast tokenizer file")


def load_model(spec: str, *, trust_remote_code: bool = False, dtype: str = "auto",
               placement: dict[str, Any] | None = None) -> LoadedModel:
    """Load ``spec``: a preset name (``tiny-qwen2-vl`` ...), or a save_pretrained directory.

    ``dtype`` (one of :data:`LOAD_DTYPES`) is the dtype the weights are held in: ``auto`` keeps the
    checkpoint's own (a bf16 checkpoint takes half the memory of an fp32 load). ``placement``
    (directories only): ``device_map`` / ``max_memory`` / ``offload_folder`` for accelerate, as
    ``from_pretrained`` takes them (docs/calibration.md, "Large checkpoints").
    """
    if dtype not in LOAD_DTYPES:
        raise ModelError(f"--load-dtype must be one of {', '.join(LOAD_DTYPES)}, got {dtype!r}")
    if placement and is_preset(spec):
        raise ModelError("--device-map/--max-memory need a save_pretrained directory, not a preset")
    if is_preset(spec):
        preset = get_preset(spec)
        model = build_model(preset)
        if dtype not in ("auto", "fp32"):
            import torch

            for p in model.parameters():  # as from_pretrained(dtype=...): buffers (rotary) stay fp32
                p.data = p.data.to(getattr(torch, DTYPES[dtype]))
        fam = family_for_config(model.config)
        fam.check_supported(model)
        return LoadedModel(model=model, family=fam, source=spec, preset=preset)
    path = Path(spec)
    if not path.is_dir():
        raise ModelError(
            f"MODEL {spec!r} is neither a preset ({', '.join(_preset_names())}) nor a local directory; "
            "download hub checkpoints with `hf download` first"
        )
    return _load_directory(path, trust_remote_code, dtype, placement or {})


def _preset_names() -> list[str]:
    from rlens.presets import PRESETS

    return list(PRESETS)


def load_config(spec: str, *, trust_remote_code: bool = False) -> tuple[Any, type[Family]]:
    """Only the config and family of MODEL (no weights): for FLOPs tables and checks."""
    if is_preset(spec):
        from rlens.presets import build_config

        config = build_config(get_preset(spec))
        return config, family_for_config(config)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ModelError(
            f"MODEL {spec!r} is neither a preset ({', '.join(_preset_names())}) nor a directory with config.json"
        )
    config = _auto_config(path, trust_remote_code)
    return config, family_for_config(config)


def _auto_config(path: Path, trust_remote_code: bool) -> Any:
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (ValueError, OSError, TypeError, KeyError, AttributeError, RecursionError) as e:
        if "trust_remote_code" in str(e):
            raise ModelError(f"{path} needs remote code; pass --trust-remote-code if you trust it") from None
        raise ModelError(f"cannot read {path}/config.json: {type(e).__name__}: {str(e)[:300]}") from None


def _load_directory(path: Path, trust_remote_code: bool, dtype: str, placement: dict[str, Any]) -> LoadedModel:
    import torch
    import transformers

    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json (expected a save_pretrained directory)")
    converted = _load_converted(path, dtype)
    if converted is not None:
        return converted
    config = _auto_config(path, trust_remote_code)
    fam = family_for_config(config)
    if not any(p.suffix == ".safetensors" for p in path.iterdir()):
        raise ModelError(f"{path} has no .safetensors weights; rlens does not load pickled weights")
    archs = [a for a in (config.architectures or []) if a in fam.architectures and hasattr(transformers, a)]
    cls = getattr(transformers, archs[0] if archs else fam.model_class)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, DTYPES[dtype])
    try:
        model = cls.from_pretrained(str(path), config=config, dtype=torch_dtype, use_safetensors=True,
                                    trust_remote_code=trust_remote_code, **placement)
    except Exception as e:  # safetensors' SafetensorError, size mismatches, ... : the files, not rlens
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"cannot load the weights in {path}: {type(e).__name__}: {str(e)[:300]}") from None
    fam.check_supported(model)
    return LoadedModel(model=model.eval(), family=fam, source=str(path))


def _load_converted(path: Path, dtype: str) -> LoadedModel | None:
    """Checkpoint layouts converted on load to native transformers classes (no remote code)."""
    import torch

    from rlens.families import internvl_opengvlab

    raw = json.loads((path / "config.json").read_text())
    if not internvl_opengvlab.is_opengvlab(raw):
        return None
    if dtype == "auto":  # the checkpoint's own dtype, as for native directories
        own = str(raw.get("torch_dtype") or raw.get("dtype") or "float32")
        dtype = {v: k for k, v in DTYPES.items()}.get(own, "fp32")
    model = internvl_opengvlab.load_opengvlab(path, getattr(torch, DTYPES[dtype]))
    fam = family_for_config(model.config)
    fam.check_supported(model)
    return LoadedModel(model=model, family=fam, source=str(path))


def model_info(model: Any, family: type[Family]) -> ModelInfo:
    sizes = family.sizes(model.config)
    return ModelInfo(
        architecture=family.model_class,
        num_layers=sizes["num_layers"],
        hidden_size=sizes["hidden_size"],
        intermediate_size=sizes["intermediate_size"],
        fingerprint=fingerprint(model, family),
    )


def fingerprint(model: Any, family: type[Family]) -> str:
    """sha256 of the decoder sizes and a fixed sample of every decoder layer's weights.

    Cheap (a few KB per layer) yet different for different checkpoints of one architecture.
    """
    h = hashlib.sha256()
    h.update(json.dumps(family.sizes(model.config), sort_keys=True).encode())
    for layer in family.decoder_layers(model):
        samples = {}
        for prefix, module in layer.named_modules():
            with _weights_present(model, module):
                for name, p in module.named_parameters(recurse=False):
                    flat = p.detach().reshape(-1)
                    samples[f"{prefix}.{name}" if prefix else name] = (flat[:256].float().cpu().numpy().tobytes(),
                                                                      flat[-256:].float().cpu().numpy().tobytes())
        for name, (head, tail) in sorted(samples.items()):
            h.update(name.encode())
            h.update(head)
            h.update(tail)
    return "sha256:" + h.hexdigest()


def _weights_present(model: Any, module: Any) -> Any:
    """A module's own weights readable in the block, also when accelerate offloaded them (a model
    loaded with a device map: their tensors are on the meta device outside the module's forward)."""
    if getattr(model, "hf_device_map", None) is None:
        return contextlib.nullcontext()
    from accelerate.utils import align_module_device

    return align_module_device(module)
