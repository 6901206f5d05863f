"""``rlens doctor``: the device check runs here without torch-free prerequisites it lacks (GPU,
TensorRT, polygraphy, built libraries): every such row is a SKIP that names its reason, nothing
FAILs, and the checks that can run on a CPU (the shipped bundle on ONNX Runtime) do run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlens.engine import doctor

REPO = Path(__file__).resolve().parents[1]


def test_doctor_runs_and_every_skip_says_why(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "rlens.cli.main", "doctor", "--reps", "2", "--json",
                        str(tmp_path / "d.json")], capture_output=True, text=True, env=env, timeout=600)
    print(r.stdout)
    out = json.loads((tmp_path / "d.json").read_text())
    assert out["format"] == "rlens.doctor"
    rows = out["rows"]
    assert r.returncode == (1 if any(x["status"] == "FAIL" for x in rows) else 0), r.stderr
    assert [x["check"] for x in rows] == [line.split("  ")[0].strip() for line in r.stdout.splitlines()[2:-1]]
    assert all(x["status"] in ("ok", "SKIP", "FAIL") for x in rows)
    assert all(x["why"] for x in rows if x["status"] == "SKIP"), "a skip without a reason"
    by = {x["check"]: x for x in rows}
    assert by["platform"]["status"] == "ok"
    assert by["bundle on ONNX Runtime (CPU)"]["status"] == "ok", by["bundle on ONNX Runtime (CPU)"]
    if by["GPU"]["status"] == "SKIP":  # this workplace: no GPU, so nothing that needs one ran
        assert by["engine build (shipped bundle)"]["status"] == "SKIP"
        assert "GPU (SKIP)" in by["kernel fp16 v2 vs numpy"]["why"]
    assert not any(x["status"] == "FAIL" for x in rows), [x for x in rows if x["status"] == "FAIL"]


def test_shipped_bundle_is_small_and_plugin_mode():
    bundle = doctor.DEFAULT_BUNDLE
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["attention"] == "plugin" and manifest["dtype"] == "fp16"
    assert sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) < 700_000


def test_a_crashing_check_fails_and_its_dependents_skip(tmp_path):
    doc = doctor.Doctor(tmp_path)
    doc.run("a", (), lambda: "fine")
    doc.run("b", ("a",), lambda: 1 / 0)
    doc.run("c", ("b",), lambda: "never")
    doc.run("d", (), lambda: ("bad numbers", "FAIL"))
    assert [(r.check, r.status) for r in doc.rows] == [("a", "ok"), ("b", "FAIL"), ("c", "SKIP"), ("d", "FAIL")]
    assert "ZeroDivisionError" in doc.rows[1].why and doc.rows[2].why == "needs b (FAIL)"
    table = doctor.format_table(doc.rows)
    assert table.splitlines()[-1] == "1 ok, 2 failed, 1 skipped"


@pytest.mark.parametrize("reps", ["0", "x"])
def test_bad_reps_is_one_clear_error(reps):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "rlens.cli.main", "doctor", "--reps", reps],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") <= 1


def test_engine_rows_run_with_a_stand_in_runner():
    """The engine rows' own code (feeds, comparison, timing, formatting) with ONNX Runtime standing
    in for the TensorRT runner: what the device runs first is not run here for the first time."""
    import onnxruntime as ort

    class OrtRunner:
        def __init__(self, path):
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def infer(self, feeds):
            return {"logits": self.session.run(["logits"], feeds)[0]}

        def deactivate(self):
            pass

    doc = doctor.Doctor(doctor.DEFAULT_BUNDLE, reps=1)
    doc.ctx.update(bundle=doctor.DEFAULT_BUNDLE, runner=OrtRunner(doctor.DEFAULT_BUNDLE / "decoder.onnx"))
    text, status = doctor._engine_vs_onnxruntime(doc)
    assert status == "ok" and "max abs diff 0.00e+00" in text
    timing = doctor._prefill_timing(doc)
    assert timing.startswith("1100 tokens, span (16, 1024), 4 hollow layers of 4: hollow/full ")


def test_doctor_json_never_replaces_a_users_file(tmp_path):
    """--json refuses an existing file that is not a doctor result, before any check runs."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "data"}')
    r = subprocess.run([sys.executable, "-m", "rlens.cli.main", "doctor", "--json", str(mine)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "refusing to replace" in r.stderr and r.stdout == "", r
    assert mine.read_text() == '{"my": "data"}'
    bad = subprocess.run([sys.executable, "-m", "rlens.cli.main", "doctor", "--reps", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--reps" in bad.stderr, bad
