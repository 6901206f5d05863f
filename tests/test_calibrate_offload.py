"""Calibrating a model that does not fit in memory: accelerate places its layers (here all of
them on "disk", read from the checkpoint one module at a time) and the plan is the same."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlens.calibrate import CalibrationConfig, plan_from_model
from rlens.errors import ModelError
from rlens.models import load_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    loaded = load_model("tiny-qwen2-vl")
    out = tmp_path_factory.mktemp("tiny-qwen2-vl")
    loaded.model.save_pretrained(str(out))
    loaded.save_processor(out)
    return out


def test_disk_offloaded_model_calibrates_to_the_same_plan(checkpoint, tmp_path):
    config = CalibrationConfig(ranking="fast", proportion=0.5, max_samples=2, progress=False)
    want, _ = plan_from_model(load_model(str(checkpoint)), config)
    offloaded = load_model(str(checkpoint), placement={"device_map": "auto", "max_memory": {"cpu": 100_000},
                                                       "offload_folder": str(tmp_path)})
    assert "disk" in set(offloaded.model.hf_device_map.values())
    assert {p.device.type for p in offloaded.model.parameters()} == {"meta"}  # nothing resident
    got, _ = plan_from_model(offloaded, config)
    assert got.model == want.model  # fingerprint read through accelerate's hooks
    assert got.ranking.order == want.ranking.order and got.layers == want.layers
    assert got.ranking.divergence == pytest.approx(want.ranking.divergence, rel=1e-5, abs=1e-9)


@pytest.mark.slow
def test_cli_flags(checkpoint, tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text("[1, 2]")
    for flags, message in ((["--max-memory", "cpu"], "DEV=SIZE"), (["--device-map", str(bad)], "JSON object")):
        proc = subprocess.run([sys.executable, "-m", "rlens.cli.main", "calibrate", str(checkpoint), "--out",
                               str(tmp_path / "p.json"), *flags], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    with pytest.raises(ModelError, match="save_pretrained directory"):
        load_model("tiny-qwen2-vl", placement={"device_map": "auto"})
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "rlens.cli.main", "calibrate", str(checkpoint), "--out", str(out),
                           "--ranking", "stats", "--max-samples", "1", "--max-memory", "cpu=100KB"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["format"] == "rlens.plan"
