"""Smoke test of bench/reward_head.py on a real (tiny) Breakout store: one row per variant, appended results."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_variants_are_scored_on_held_out_transitions(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "dws_gym.collect", "--env-id", "ALE/Breakout-v5", "--steps", "800",
                    "--out", str(tmp_path / "store"), "--no-progress"], check=True, env=env, capture_output=True)
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "reward_head.py"), "--data", str(tmp_path / "store"),
                           "--steps", "2", "--batch-size", "8", "--held-out-fraction", "0.3", "--fractions", "0.25",
                           "--write-results", "--results-file", str(results)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert "reward>0 recall" in rows[0] and "terminated precision" in rows[0]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["weighted (clip 10)", "oversample 0.25"]
    text = results.read_text()
    assert text.startswith("# figures\n") and "## Reward head" in text and "oversample 0.25" in text
