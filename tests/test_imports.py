"""Importing rlens has no side effects; the runtime-side modules import neither torch nor export code."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SNAPSHOT = textwrap.dedent(
    """
    import json, os, pkgutil, importlib, sys
    import torch, transformers
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    def snap():
        return json.dumps({
            "attn": sorted(ALL_ATTENTION_FUNCTIONS.valid_keys()),
            "mask": sorted(ALL_MASK_ATTENTION_FUNCTIONS.valid_keys()),
            "dtype": str(torch.get_default_dtype()),
            "grad": torch.is_grad_enabled(),
            "threads": torch.get_num_threads(),
            "seed": torch.initial_seed(),
            "rng": torch.get_rng_state().sum().item(),
            "verbosity": transformers.logging.get_verbosity(),
            "env": sorted(k for k in os.environ if "TRANSFORMERS" in k or "TORCH" in k or "HF_" in k),
            "funcs": [id(getattr(m, n)) for m, n in [(torch.nn.Module, "__call__"), (torch.nn.functional, "scaled_dot_product_attention"), ]] + [id(transformers.PreTrainedModel.__dict__["from_pretrained"])],
        }, sort_keys=True)

    before = snap()
    import rlens
    names = [m.name for m in pkgutil.walk_packages(rlens.__path__, "rlens.")]
    for name in names:
        importlib.import_module(name)
    after = snap()
    print(len(names))
    assert before == after, (before, after)
    """
)


def test_importing_every_module_changes_no_global_state():
    r = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) >= 10


def test_reduced_context_restores_transformers_registry(any_preset):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from rlens.plan import LayerPlan, Plan
    from rlens.reference import reduced

    loaded = any_preset[0]
    before = sorted(ALL_ATTENTION_FUNCTIONS.valid_keys())
    attn = loaded.family.attention(loaded.family.decoder_layers(loaded.model)[0])
    cfg_before = attn.config
    plan = Plan(model=loaded.info(), layers=(LayerPlan(0, hollow_window=2),))
    with reduced(loaded.model, plan):
        assert "rlens_hollow_reference" in ALL_ATTENTION_FUNCTIONS.valid_keys()
    assert sorted(ALL_ATTENTION_FUNCTIONS.valid_keys()) == before
    assert attn.config is cfg_before and not hasattr(attn, "_rlens_hollow")
