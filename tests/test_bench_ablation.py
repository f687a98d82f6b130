"""Smoke test of bench/ablation.py: two variants trained side by side at tiny sizes, one comparison table."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--collect-steps 300 --unet.widths 8 16 16 --flow.patch-size 4 --flow.num-heads 2 --flow.head-dim 48 "
        "--flow.num-layers 1 --flow.ffn-dim 64 --context-frames 3 --horizon 2 --batch-size 2 --reward-steps 2 "
        "--reward-batch-size 8 --eval-clips 2 --eval-horizon 5 --num-start-states 2 --flow.sampling-steps 1 "
        "--warmup-steps 1")


def test_two_variants_side_by_side_give_one_table(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "bench" / "ablation.py"), "--data", str(tmp_path / "store"),
           "--total-steps", "2", "--out", str(tmp_path / "runs"), "--jobs", "2",
           "--variants", "frame, c=default", "none, c=default", f"--extra={TINY}",
           "--ball-clips", "4", "--write-results", "--results-file", str(results)]
    # Both variants share one store: collect it first so the two runs do not both collect into it.
    subprocess.run([sys.executable, "-m", "dws_gym.collect", "--env-id", "ALE/Breakout-v5", "--steps", "300",
                    "--out", str(tmp_path / "store"), "--no-progress"], check=True, env=env, capture_output=True)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant |"))  # after the runs' own tables
    rows = [line for line in lines[start:] if line.startswith("| ")]
    assert "action_sensitivity h1-5" in rows[0] and "| ball h1-5 | ball h1-15 |" in rows[0]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["frame, c=default", "none, c=default"]
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert all(c != "n/a" for c in cells[:-1])  # every metric was measured (acceptance needs h >= 15)
        float(cells[0])
    text = results.read_text()
    assert text.startswith("# figures\n") and "## DWS ablation" in text and "none, c=default" in text

    # An interrupted ablation: one variant lost its export. --resume keeps the finished one and continues the other
    # from its checkpoint instead of training both again.
    import shutil
    shutil.rmtree(tmp_path / "runs" / "none_c=default" / "simulator")
    frame_config = tmp_path / "runs" / "frame_c=default" / "simulator" / "simulator_config.json"
    before = frame_config.read_text()
    proc = subprocess.run([*cmd[:-3], "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== frame, c=default: finished" in proc.stdout
    assert "resumed" in proc.stdout and "none_c=default" in proc.stdout
    assert frame_config.read_text() == before
    assert (tmp_path / "runs" / "none_c=default" / "simulator" / "simulator_config.json").exists()
    assert results.read_text() == text  # written once, by the run that asked for it
