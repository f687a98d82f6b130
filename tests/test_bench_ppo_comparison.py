"""bench/ppo_comparison.py: the table and plot from TensorBoard logs (fake runs), and one tiny end-to-end comparison."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from tiny_sim import make_tiny_sim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import ppo_comparison as pc  # noqa: E402


def _hparams(num_dream_envs: int = 4, horizon: int = 2) -> str:
    """The text table ppo_dws.py logs at every start (a few of its rows)."""
    rows = {"seed": 1, "num_dream_envs": num_dream_envs, "horizon": horizon, "imagination": "prioritized"}
    return "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in rows.items())


def _write(folder: Path, t0: float, t1: float, evals: dict, imagined: dict | None = None, real: dict | None = None):
    """One event file: hyperparameters at wall time t0, eval returns {step: value}, the last event at t1."""
    w = SummaryWriter(str(folder))
    w.add_text("hyperparameters", _hparams(), walltime=t0)
    for step, value in (real or {}).items():
        w.add_scalar(pc.REAL_TAG, value, step, walltime=t0 + 1)
    for step, value in (imagined or {}).items():
        w.add_scalar(pc.IMAGINED_TAG, value, step, walltime=t0 + 1)
    for i, (step, value) in enumerate(evals.items()):
        w.add_scalar(pc.EVAL_TAG, value, step, walltime=t1 if i == len(evals) - 1 else t0 + 2)
    w.close()


@pytest.fixture
def fake_runs(tmp_path):
    out = tmp_path / "runs"
    steps = (100, 200, 300)
    _write(out / "none_s1", 1000, 1060, dict(zip(steps, (0, 2, 4))))
    _write(out / "none_s2", 1000, 1100, dict(zip(steps, (1, 3, 8))))
    _write(out / "prioritized_s1", 1000, 1040, dict(zip(steps, (1, 1, 1))),
           imagined=dict(zip(steps, (0.1, 0.2, 0.3))), real=dict(zip(steps, (0.0, 0.1, 0.1))))
    # a resumed run: the second start redoes step 200, whose values replace the first file's
    _write(out / "prioritized_s2", 1000, 1050, {100: 3, 200: 99},
           imagined={100: 0.0, 200: 5.0}, real={100: 0.1, 200: 0.1})
    _write(out / "prioritized_s2", 2000, 2030, {200: 5, 300: 7},
           imagined={200: 0.0, 300: 0.0}, real={200: 0.1, 300: 0.1})
    return out


def test_table_numbers_from_fake_logs(fake_runs):
    assert len(pc._event_files(fake_runs / "prioritized_s2")) == 2
    results = pc.collect(fake_runs, ["none", "prioritized"], [1, 2])
    none, prio = results["none"], results["prioritized"]

    # none: finals 4, 8; AUC (trapezoid / 200 steps) (100 + 300) / 200 = 2 and (200 + 550) / 200 = 3.75
    assert [r["final"] for r in none] == [4, 8]
    assert [r["auc"] for r in none] == pytest.approx([2.0, 3.75])
    assert [r["wall_s"] for r in none] == pytest.approx([60, 100])
    assert [r["imagined"] for r in none] == [0, 0] and [r["gap"] for r in none] == [None, None]
    # prioritized seed 2 was resumed: eval 3, 5, 7 (the stale 99 replaced), wall 50 + 30 s, 3 rollouts of 4 x 2
    np.testing.assert_array_equal(prio[1]["steps"], [100, 200, 300])
    np.testing.assert_array_equal(prio[1]["returns"], [3, 5, 7])
    assert [r["final"] for r in prio] == [1, 7]
    assert [r["auc"] for r in prio] == pytest.approx([1.0, 5.0])
    assert [r["wall_s"] for r in prio] == pytest.approx([40, 80])
    assert [r["imagined"] for r in prio] == [24, 24]
    assert prio[0]["gap"] == pytest.approx((0.1 + 0.1 + 0.2) / 3)
    assert prio[1]["gap"] == pytest.approx(-0.1)

    steps, mean, std = pc.arm_curve(none)
    np.testing.assert_array_equal(steps, [100, 200, 300])
    np.testing.assert_allclose(mean, [0.5, 2.5, 6.0])
    np.testing.assert_allclose(std, [0.5, 0.5, 2.0])

    rows = pc.comparison_table(results).splitlines()
    assert rows[0].startswith("| arm | seeds | final eval return | AUC")
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows[2:]}
    # mean ± population std over the two seeds, by hand
    assert cells["none"] == ["2", "6.00 ± 2.00", "2.88 ± 0.88", "80.0 ± 20.0 s", "0", "n/a"]
    gap_mean, gap_std = (0.4 / 3 - 0.1) / 2, (0.4 / 3 + 0.1) / 2
    assert cells["prioritized"] == ["2", "4.00 ± 3.00", "3.00 ± 2.00", "60.0 ± 20.0 s", "24",
                                    f"{gap_mean:+.4f} ± {gap_std:.4f}"]


def test_plot_is_written(fake_runs, tmp_path):
    if not pc.have_matplotlib():
        pytest.skip("matplotlib is not installed")
    path = pc.plot_comparison(pc.collect(fake_runs, ["none", "prioritized"], [1, 2]), tmp_path / "docs" / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_flag_without_matplotlib_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(pc, "have_matplotlib", lambda: False)
    with pytest.raises(SystemExit) as exc:
        pc.parse_args(["--plot"])
    assert exc.value.code == 2
    assert "error: --plot needs matplotlib: pip install matplotlib" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_comparison_end_to_end_and_resume(tmp_path):
    sim = tmp_path / "sim"
    make_tiny_sim(0).save_pretrained(sim)
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "bench" / "ppo_comparison.py"), "--total-timesteps", "64", "--seeds", "1",
           "--arms", "none", "uniform", "--simulator", str(sim), "--out", str(tmp_path / "runs"), "--jobs", "2",
           "--threads", "1", "--extra=--num-envs 2 --num-steps 16 --num-dream-envs 2 --horizon 2 --eval-every 32 "
           "--eval-episodes 1 --eval-max-steps 20 --no-cuda", "--results-file", str(results)]
    proc = subprocess.run([*cmd, "--write-results"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["none", "uniform"]
    launched = [line for line in proc.stdout.splitlines() if line.startswith("== ") and "ppo_dws.py" in line]
    assert len(launched) == 2 and all("--no-episodic-life" in line for line in launched)  # one value-target rule
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows[1:]}
    assert cells["none"][4] == "0" and cells["none"][5] == "n/a"
    assert cells["uniform"][4] == "8"  # 2 iterations x 2 dreams x horizon 2
    for cell in (cells["none"][1], cells["uniform"][1], cells["uniform"][5]):
        assert "±" in cell and "n/a" not in cell
    text = results.read_text()
    assert text.startswith("# figures\n") and "## PPO: prioritized vs uniform imagination vs none" in text
    assert "Machine: " in text and "Command: `python bench/ppo_comparison.py " in text and "| uniform | 1 |" in text

    # everything finished: --resume keeps both runs and only tabulates
    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "== none_s1: finished" in again.stdout and "== uniform_s1: finished" in again.stdout
    assert [r for r in again.stdout.splitlines() if r.startswith("| ")] == rows
