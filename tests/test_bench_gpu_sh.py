"""bench/gpu.sh: its CPU smoke path (DWS_GPU_SMOKE=1) runs every step and writes the results rows."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dws_gym.hardware import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"


def run(tmp_path, *args, smoke="1"):
    env = {**os.environ, "DWS_GPU_SMOKE": smoke, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "DWS_SITE": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # ~45 s on a loaded 2-core machine: two bench runs with their imports and real ALE envs
def test_cpu_smoke_path_writes_eager_and_compiled_rows(tmp_path):
    proc = run(tmp_path, "--peak-tflops", "123")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "out" / "RESULTS-gpu.md").read_text()
    assert text.count("## Dream env throughput") == 2 and "% of peak against 123 TFLOP/s" in text
    calls = "UNetWorldModel.denoise, RewardHead.frame_tokens, RewardHead.logits_from_tokens"
    assert f"torch.compile({calls}, backend='eager', dynamic=True)" in text
    auto = resolve_precision("auto", "cpu").name
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \| (yes|no) \| \d+ \| ([\d,.]+) \|", text, flags=re.M)
    assert [(n, p.strip(), c) for n, p, c, _ in rows] == [
        ("2", "fp32", "no"), ("2", f"{auto} (auto)", "no"), ("4", "fp32", "no"), ("4", f"{auto} (auto)", "no"),
        ("2", f"{auto} (auto)", "yes"), ("4", f"{auto} (auto)", "yes")]
    assert all(float(tps.replace(",", "")) > 0 for *_, tps in rows)
    assert "time for 1,000,000 transitions" in text and "real ALE transitions/s" in text


def test_unknown_argument_is_rejected(tmp_path):
    proc = run(tmp_path, "--nope")
    assert proc.returncode == 2 and "unknown argument --nope" in proc.stderr
