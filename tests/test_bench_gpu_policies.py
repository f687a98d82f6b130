"""bench/gpu_policies.sh's CPU smoke path: plain PPO on Procgen training levels, evaluated on train and unseen levels,
and a second call that resumes the run instead of starting over."""

import json
import os
import subprocess
import sys
from pathlib import Path

from dws_gym.agents import load_policy

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, **extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, DWS_GPU_SMOKE="1", OUT=str(out), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", **extra)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_policies.sh"), "0.01"], cwd=out.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_gpu_policies_script_trains_evaluates_and_resumes(tmp_path):
    out = tmp_path / "out"
    _run(out)
    for game in ("coinrun", "ninja"):
        policy = load_policy(out / game / "policy")
        assert policy.config.env_id == f"procgen/{game}" and policy.config.arch == "impala"
        extra = policy.config.extra
        assert extra["imagination"] == "none" and extra["levels"]["num_levels"] == 200
        assert set(extra["evaluation"]["ranges"]) == {"train", "test"}
        assert json.loads((out / game / "evaluation.json").read_text()) == extra["evaluation"]
    log = (out / "gpu_policies.log").read_text()
    assert "on levels >= 250" in log and "host cores" in log

    # A later call with the earlier call's files (read-only, as a device call returns them) continues each run:
    # budgets add up across device calls.
    first = load_policy(out / "coinrun" / "policy").config.extra["global_step"]
    again = tmp_path / "again"
    subprocess.run(["chmod", "-R", "a-w", str(out)], check=True)
    try:
        proc = _run(again, DWS_RESUME_FROM=str(out), DWS_GAMES="coinrun", DWS_TOTAL_STEPS="128")
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(out)], check=True)
    assert "resumed" in proc.stdout
    assert load_policy(again / "coinrun" / "policy").config.extra["global_step"] > first
