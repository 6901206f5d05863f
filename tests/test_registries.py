"""Registered components: a new attention mode or token pruning method is one declaration that the
generic code (config validation, plan validation, the exporter, the reference, the CLI) picks up
without naming it."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ort_session

from rlens.attention_modes import ATTENTION_MODES, AttentionMode, needs_plugin
from rlens.configs import ExportConfig
from rlens.errors import InputError
from rlens.export.decoder import decoder_model, geometry
from rlens.export.verify import check_decoder, sample
from rlens.models import load_model
from rlens.plan import LayerPlan, Plan, TokenPruning, plan_from_dict
from rlens.pruning import PRUNING_METHODS, PruningMethod


def test_a_new_attention_mode_is_one_registry_entry(monkeypatch):
    """A mode declared only in ATTENTION_MODES (here: the portable emitter under another name) is
    accepted by ExportConfig and built by the exporter; its graph computes what portable computes."""
    mode = AttentionMode("portable-copy", "test mode", "rlens.export.attention:emit_portable")
    monkeypatch.setitem(ATTENTION_MODES, mode.name, mode)
    assert ExportConfig(attention=mode.name).attention == mode.name and not needs_plugin(mode.name)
    with pytest.raises(InputError, match="portable-copy"):
        ExportConfig(attention="nonexistent")
    lm = load_model("tiny-llava")
    plan = Plan(model=lm.info(), layers=(LayerPlan(1, hollow_window=3),))
    feeds = sample(geometry(lm), 0, 1, 24, (3, 14)).feeds
    a = ort_session(decoder_model(lm, plan, "portable")).run(["logits"], feeds)[0]
    b = ort_session(decoder_model(lm, plan, mode.name)).run(["logits"], feeds)[0]
    np.testing.assert_array_equal(a, b)


class _DropHalf(PruningMethod):
    """A method no generic code knows: like FastV it ranks by layer K-1's attention, with a ratio
    fixed at 0.5 (plans carry no 'ratio')."""

    name = "drop-half"
    title = "DropHalf"
    ranks_tokens = True
    fixed_ratio = 0.5
    metavar = "K"
    help = "test method"

    def parse_flag(self, value: str) -> int:
        return int(value)

    def fixed(self, value: int, num_layers: int) -> dict:
        return {"layer": value, "ratio": 0.5}


def test_a_new_pruning_method_is_one_class(monkeypatch):
    """Registered, the method validates in plan files and its decoder export matches the reference
    (prefill + decode), and it prunes exactly like FastV at R = 0.5."""
    monkeypatch.setitem(PRUNING_METHODS, _DropHalf.name, _DropHalf())
    lm = load_model("tiny-llava")
    info = lm.info()
    plan = Plan(model=info, token_pruning=TokenPruning("drop-half", 2, 0.5))
    raw = plan.to_json()
    assert raw["token_pruning"] == {"method": "drop-half", "layer": 2}  # ratio fixed by the method
    assert plan_from_dict(raw).token_pruning == plan.token_pruning
    assert plan.token_pruning.score_layer == 1 and plan.token_pruning.kept(14) == 7
    cmp = check_decoder(ort_session(decoder_model(lm, plan)), lm, plan, geometry(lm), steps=2)
    assert cmp.max_abs_diff <= 1e-4, cmp.per_output
    fastv = Plan(model=info, token_pruning=TokenPruning("fastv", 2, 0.5))
    feeds = sample(geometry(lm), 0, 1, 24, (3, 14)).feeds
    a = ort_session(decoder_model(lm, plan)).run(["logits"], feeds)[0]
    b = ort_session(decoder_model(lm, fastv)).run(["logits"], feeds)[0]
    np.testing.assert_array_equal(a, b)


def test_cli_flags_come_from_the_registries():
    from rlens.cli.main import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["calibrate"].format_help()
    for m in PRUNING_METHODS.values():
        assert f"--{m.name} {m.metavar}" in text
    export = build_parser()._subparsers._group_actions[0].choices["export"].format_help()
    for name in ATTENTION_MODES:
        assert name in export
