"""The CLI: help for every flag, JSON output, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _rlens(*args):
    return subprocess.run([sys.executable, "-m", "rlens.cli.main", *args], capture_output=True, text=True)


def test_help_explains_every_flag():
    from rlens.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"rlens {name}: {action.option_strings or action.dest} has no help"


def test_inspect_json():
    r = _rlens("inspect", "tiny-internvl", "--visual-tokens", "1024", "--text-tokens", "64", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["family"] == "internvl" and out["sizes"]["num_layers"] == 4
    assert out["flops"]["ratio"] == 1.0 and len(out["flops"]["layers"]) == 4


def test_inspect_with_plan(tmp_path):
    from rlens.models import load_model
    from rlens.plan import LayerPlan, Plan

    info = load_model("tiny-llava").info()
    plan = Plan(model=info, layers=(LayerPlan(2, hollow_window=4, ffn_keep=48, ffn_indices=tuple(range(48))),))
    plan.save(tmp_path / "plan.json")
    r = _rlens("inspect", "tiny-llava", "--plan", str(tmp_path / "plan.json"), "--visual-tokens", "16",
               "--text-tokens", "40", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["flops"]["ratio"] < 1.0
    wrong = _rlens("inspect", "tiny-qwen2-vl", "--plan", str(tmp_path / "plan.json"))
    assert wrong.returncode == 2 and "fingerprint" in wrong.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["inspect", "no-such-model"], "neither a preset"),
        (["inspect", "tiny-llava", "--plan", "/nonexistent/plan.json"], "cannot read plan"),
        (["inspect", "tiny-llava", "--text-before", "99"], "--text-before"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message):
    r = _rlens(*args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_unsupported_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper", "architectures": ["WhisperModel"]}))
    r = _rlens("inspect", str(tmp_path))
    assert r.returncode == 2 and "unsupported architecture WhisperModel" in r.stderr


def test_export_writes_a_verified_bundle_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "bundle"
    r = _rlens("export", "tiny-llava", "--out", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["max_abs_diff"]["decoder"] < 1e-4
    again = _rlens("export", "tiny-llava", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_export_with_plan_for_another_model_fails_cleanly(tmp_path):
    from rlens.models import load_model
    from rlens.plan import LayerPlan, Plan

    info = load_model("tiny-llava").info()
    Plan(model=info, layers=(LayerPlan(1, hollow_window=4),)).save(tmp_path / "plan.json")
    r = _rlens("export", "tiny-internvl", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and not (tmp_path / "b").exists()


def test_calibrate_writes_a_valid_plan_and_report(tmp_path):
    from rlens.models import load_model
    from rlens.plan import load_plan

    out = tmp_path / "plans" / "plan.json"
    r = _rlens("calibrate", "tiny-internvl", "--out", str(out), "--ranking", "fast", "--max-samples", "2",
               "--window", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    plan = load_plan(out, load_model("tiny-internvl").info())
    assert len(plan.layers) == 2 and plan.ranking.method == "fast"
    assert (tmp_path / "plans" / "plan.report.png").stat().st_size > 1000


def test_calibrate_negative_greedy_cache_is_one_line(tmp_path):
    out = tmp_path / "plan.json"
    r = _rlens("calibrate", "tiny-llava", "--out", str(out), "--greedy-cache", "-1")
    assert r.returncode == 2 and "--greedy-cache must be" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_calibrate_bad_data_names_the_line_and_writes_nothing(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"image": "missing.png", "prompt": "hi"}\n')
    out = tmp_path / "plan.json"
    r = _rlens("calibrate", "tiny-llava", "--data", str(data), "--out", str(out))
    assert r.returncode == 2 and "data.jsonl:1: image" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "plan.report.png").exists()


@pytest.mark.slow
def test_one_step_export_calibrates_and_exports(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys; from rlens.cli.main import export_main; "
                        "sys.exit(export_main(sys.argv[1:]))", "tiny-llava", str(tmp_path / "b"),
                        "--ranking", "fast", "--max-samples", "2", "--window", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    plan = json.loads((tmp_path / "b" / "plan.json").read_text())
    assert plan["ranking"]["method"] == "fast" and len(plan["layers"]) == 2
    bad = subprocess.run([sys.executable, "-c", "import sys; from rlens.cli.main import export_main; "
                          "sys.exit(export_main(sys.argv[1:]))", "tiny-llava", str(tmp_path / "c"), "--budget", "0.01"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "budget" in bad.stderr and not (tmp_path / "c").exists()


def test_every_flag_default_is_declared_once_in_a_config():
    """A flag whose default is a value (not None/False) is a field of a config dataclass in
    rlens.configs with that default: the CLI restates none (issue 13 item 4)."""
    import dataclasses

    from rlens import configs
    from rlens.cli.main import build_parser

    declared = {}
    for cls in vars(configs).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if "cli" in f.metadata:
                    declared.setdefault(f.name, set()).add(repr(f.default))
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    restated = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help" or action.default in (None, False) or not action.option_strings:
                continue
            if repr(action.default) not in declared.get(action.dest, ()):
                restated.append(f"rlens {name} {action.option_strings[0]} (default {action.default!r})")
    assert not restated, restated
