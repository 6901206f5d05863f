"""The README's quick start: exactly two commands, and the main-job one runs (set-up included)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    cmds = _quick_start_commands()
    assert cmds == ["./dev.sh demo", "./dev.sh test"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert cmds[1] in ci, "CI must run the README's test command as written"


@pytest.mark.slow
def test_main_job_command_runs():
    import json
    import os

    bundle = ROOT / "out" / "test-readme-bundle"
    env = dict(os.environ, RLENS_DEMO_BUNDLE=str(bundle))
    r = subprocess.run(_quick_start_commands()[0], shell=True, cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ready" in r.stderr and "16 new" in r.stderr and "tokens/s" in r.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["family"] == "qwen2-vl" and manifest["verification"]["max_abs_diff"]["decoder"] < 1e-4
    assert json.loads((bundle / "plan.json").read_text())["layers"], "the demo bundle is reduced"
