"""The distribution as a user installs it: build the wheel, install it without extras and with
`[onnxruntime]` into clean virtual environments (no torch, no transformers), and run a bundle
made by the export environment; plus what each extra resolves to (never both ONNX Runtimes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
PROMPT = "What is in the image?"


def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.args, r.stdout[-2000:], r.stderr[-4000:])
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _ok(_run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT))
    (whl,) = out.glob("*.whl")
    return whl


def _venv(path: Path, *requirements: str) -> Path:
    _ok(_run(sys.executable, "-m", "venv", path))
    if requirements:
        _ok(_run(path / "bin" / "python", "-m", "pip", "install", "-q", "-c", CONSTRAINTS, *requirements))
    return path / "bin"


def test_distribution_name_and_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "redundancylens"  # "rlens" on PyPI is an unrelated project
    base = " ".join(meta["dependencies"])
    for heavy in ("torch", "transformers", "onnxruntime"):
        assert heavy not in base, f"{heavy} must not be a runtime (base) dependency"
    extras = meta["optional-dependencies"]
    assert extras["onnxruntime"] == ["onnxruntime>=1.18"] and extras["onnxruntime-gpu"] == ["onnxruntime-gpu>=1.18"]
    assert not any("onnxruntime" in r for name, reqs in extras.items() if not name.startswith("onnxruntime")
                   for r in reqs)


@pytest.mark.parametrize("extras", ["", "[onnxruntime]", "[onnxruntime-gpu]", "[export,onnxruntime]"])
def test_each_extra_resolves_to_at_most_one_onnxruntime(wheel, extras, tmp_path):
    report = tmp_path / "report.json"
    r = _run(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report", report,
             "-c", CONSTRAINTS, f"{wheel}{extras}")
    if r.returncode != 0 and "onnxruntime-gpu" in extras and "onnxruntime-gpu" in r.stderr:
        pytest.skip(f"onnxruntime-gpu cannot be resolved here: {r.stderr.strip().splitlines()[-1]}")
    _ok(r)
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    ort = sorted(n for n in names if n in ("onnxruntime", "onnxruntime-gpu"))
    print(f"redundancylens{extras}: onnxruntime packages {ort}")
    assert len(ort) <= 1
    assert ("torch" in names) == ("export" in extras)
    if extras in ("[onnxruntime]", "[onnxruntime-gpu]"):
        assert ort == [extras[1:-1]] and "transformers" not in names


def test_runtime_only_install_runs_a_bundle(wheel, tmp_path, tmp_path_factory):
    bundle = tmp_path / "bundle"
    scripts = Path(sys.executable).parent
    _ok(_run(scripts / "rlens-export", "tiny-qwen2-vl", bundle))
    image = ROOT / "examples" / "demo.png"
    run_args = ["run", bundle, "--image", image, "--prompt", PROMPT, "--max-new-tokens", "12"]
    want = _ok(_run(scripts / "rlens", *run_args))

    bare = _venv(tmp_path / "bare", str(wheel))  # no extras: no ONNX Runtime
    r = _run(bare / "rlens", *run_args)
    assert r.returncode == 2 and 'redundancylens[onnxruntime]' in r.stderr and "Traceback" not in r.stderr

    clean = _venv(tmp_path / "clean", f"{wheel}[onnxruntime]")
    for absent in ("torch", "transformers"):
        r = _run(clean / "python", "-c", f"import {absent}")
        assert r.returncode != 0, f"{absent} is installed in the runtime-only environment"
    got = _ok(_run(clean / "rlens", *run_args))
    assert got.stdout == want.stdout  # the same greedy answer as the export environment's runtime
    print("runtime-only:", got.stderr.strip().splitlines()[-1])
