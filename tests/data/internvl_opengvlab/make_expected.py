"""Run once, outside the repository's environment, to make ``<variant>.json`` (the oracle of
tests/test_internvl_opengvlab.py): OpenGVLab's own ``InternVLChatModel`` on a seeded tiny checkpoint.

    PYTHONPATH=<transformers 4.45>:<stubs for peft/timm>:<InternVL>/internvl_chat \\
        python tests/data/internvl_opengvlab/make_expected.py

OpenGVLab's code (github.com/OpenGVLab/InternVL, internvl_chat/internvl/model) is imported from
PYTHONPATH, never copied here. It imports ``peft`` (LoRA, unused at inference) and ``timm``'s
``DropPath`` (identity at rate 0), which were stubbed on that path. Used: transformers 4.45.2,
torch 2.13 CPU, InternVL main at the time of writing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from checkpoint import CONFIGS, IMG_CONTEXT_ID, inputs, weights  # noqa: E402


def main() -> None:
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

    for variant, raw in CONFIGS.items():
        config = InternVLChatConfig(**json.loads(json.dumps(raw)))
        model = InternVLChatModel(config, use_flash_attn=False).eval()
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        spec = {"config": dict(raw, architectures=["InternVLChatModel"], model_type="internvl_chat"),
                "shapes": shapes}
        state = {k: torch.from_numpy(v) for k, v in weights(spec).items()}
        model.load_state_dict(state, strict=True)
        model.img_context_token_id = IMG_CONTEXT_ID
        ids, pixels = inputs()
        with torch.no_grad():
            out = model(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                        image_flags=torch.ones(pixels.shape[0], 1, dtype=torch.long))
        logits = out.logits[0].float().numpy()
        spec["expected"] = {"logits": np.round(logits.astype(np.float64), 7).tolist(),
                            "code": "OpenGVLab InternVLChatModel", "transformers": __import__("transformers").__version__}
        (HERE / f"{variant}.json").write_text(json.dumps(spec) + "\n")
        print(variant, logits.shape, float(np.abs(logits).max()))


if __name__ == "__main__":
    main()
