"""bench/gpu_train.sh's CPU smoke path: collect -> budgeted training -> evaluation with events, on toy sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dws_gym.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path, **extra):
    """The script's environment: this Python, the smoke sizes, and no DWS_* knob left over from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DWS_")}
    return dict(env, PYTHON=sys.executable, DWS_GPU_SMOKE="1", OUT=str(tmp_path), OMP_NUM_THREADS="1",
                HF_HUB_OFFLINE="1", **extra)


def test_gpu_train_script_smoke_path_writes_a_scored_simulator(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_train.sh"), "0.2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sim = Simulator.from_pretrained(tmp_path / "run" / "simulator")
    assert sim.config.backbone == "unet"
    assert "--budget-minutes 0.2" in sim.config.training["command"]
    assert "scripted:breakout-tracker" in sim.config.training["data"]
    result = json.loads((tmp_path / "evaluation.json").read_text())
    text = json.dumps(result)
    assert "closed_loop" in text and "events" in text
    log = (tmp_path / "gpu_train.log").read_text()
    assert "collect" in log and "train" in log and "evaluate" in log
    assert (tmp_path / "model_card.md").is_file()


def test_gpu_train_script_fine_tunes_ninja_from_the_shipped_coinrun_simulator(tmp_path):
    pytest.importorskip("procgen")
    env = _env(tmp_path, DWS_MAX_STEPS="1", DWS_CLOSED_LOOP="1")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_train.sh"), "0.2", "ninja"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sim = Simulator.from_pretrained(tmp_path / "ninja" / "run" / "simulator")
    assert sim.config.env_id == "procgen/ninja"
    assert sim.config.training["initialised_from"].startswith("dws_gym/assets/simulators/coinrun")
    assert "--unet.context-noise 0.2" in sim.config.training["command"]
    assert "--learning-rate 1e-3" in sim.config.training["command"]
    assert "scripted:procgen-runner" in sim.config.training["data"]
    assert (tmp_path / "ninja" / "evaluation.json").is_file()
    bad = subprocess.run(["bash", str(ROOT / "bench" / "gpu_train.sh"), "1", "pong"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown game 'pong'" in bad.stderr
