"""bench/ball_tracker.py: the Breakout ball tracker on real frames, the agreement table, and a CLI smoke run."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scripts import load_script
from tiny_sim import make_tiny_sim

from dws_gym.collect import CollectArgs, collect
from dws_gym.data import TrajectoryStore, split_episodes
from dws_gym.envs.real import make_real_env
from dws_gym.evaluation import sample_eval_clips

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "ball_tracker.py"
FIRE, NOOP = 1, 0


@pytest.fixture(scope="module")
def bench():
    yield load_script("bench/ball_tracker.py", "bench_ball_tracker")
    sys.modules.pop("bench_ball_tracker", None)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("breakout")
    collect(CollectArgs(env_id="ALE/Breakout-v5", steps=400, out=str(out), num_envs=4, progress=False))
    return str(out)


def test_finds_the_ball_after_fire_and_none_on_the_reset_frame(bench):
    env = make_real_env("ALE/Breakout-v5", num_envs=1, num_threads=1)
    try:
        obs, _ = env.reset(seed=0)
        assert bench.find_ball(obs[0]) is None  # no ball before FIRE
        obs, *_ = env.step(np.array([FIRE]))
        frames = [obs[0]]
        for _ in range(4):
            obs, *_ = env.step(np.array([NOOP]))
            frames.append(obs[0])
    finally:
        env.close()
    positions = [bench.find_ball(f) for f in frames]
    assert all(p is not None for p in positions)
    for frame, (y, x) in zip(frames, positions):
        # The position is on the ball: the brightest pixel of the play area between bricks and paddle is red ...
        region = frame[29:57, 4:60].astype(int)
        by, bx = np.unravel_index(region.max(-1).argmax(), region.shape[:2])
        assert abs(y - (by + 29)) <= 1 and abs(x - (bx + 4)) <= 1
        assert region[by, bx, 0] > 2 * region[by, bx, 1]
    # ... and it moves a little each step, never jumps.
    steps = np.linalg.norm(np.diff(np.asarray(positions), axis=0), axis=1)
    assert (steps > 0.5).all() and (steps < 4).all()
    with pytest.raises(ValueError, match="64, 64, 3"):
        bench.find_ball(np.zeros((32, 32, 3), np.uint8))


def test_agreement_counts_only_frames_with_a_real_ball(bench, store_path):
    store = TrajectoryStore(store_path)
    _, held = split_episodes(store, held_out_fraction=0.5)
    clips = sample_eval_clips(store, held, 3, 6, 6, np.random.default_rng(0))
    sim = make_tiny_sim(0, context=3, perturb=False)  # a fresh residual model copies the last context frame
    out = bench.ball_agreement(sim, clips, 6, generator=torch.Generator().manual_seed(0))
    assert out["real"].shape == (6, 6, 2) and out["present"].shape == (6, 6)
    np.testing.assert_array_equal(out["present"], ~np.isnan(out["real"][..., 0]))
    # Copying model == copy baseline, frame for frame.
    np.testing.assert_array_equal(out["model_agree"], out["copy_agree"])
    rows = out["table"].rows
    assert [r["h"] for r in rows] == ["1..5", "1..6"]
    assert rows[0]["real ball visible"] == int(out["present"][:, :5].sum())
    assert rows[1]["model within 4 px"] == rows[1]["copy within 4 px"]


def test_cli_smoke_appends_results(store_path, tmp_path):
    sim = tmp_path / "sim"
    make_tiny_sim(0, context=3).save_pretrained(sim)
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(BENCH), "--simulator", str(sim), "--data", store_path, "--clips", "4",
                           "--horizon", "6", "--held-out-fraction", "0.5", "--threads", "1", "--write-results",
                           "--results-file", str(results)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert "model within 4 px" in rows[0] and "copy within 4 px" in rows[0]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["1..5", "1..6"]
    text = results.read_text()
    assert text.startswith("# figures\n") and "## Breakout ball tracking" in text
    assert "Machine: " in text and "Command: `python bench/ball_tracker.py" in text


def test_closed_loop_events_compare_real_and_dreamed_bricks_and_rewards(bench):
    env = make_real_env("ALE/Breakout-v5", num_envs=1, num_threads=1)
    try:
        obs, _ = env.reset(seed=0)
    finally:
        env.close()
    assert bench.brick_pixels(obs[0]) == 12 * 56  # six full brick rows of two pixel rows, inside the walls
    sim = make_tiny_sim(0, context=3, perturb=False)  # copies its last context frame: the dream never changes
    out = bench.closed_loop_events(sim, episodes=6, steps=60, seed=3)
    assert out["real"].shape == out["dream"].shape == (6, 60, 64, 64, 3)
    real, dream = out["table"].rows
    assert real["side"] == "real" and dream["side"] == "dream"
    assert dream["brick-loss events"] == 0
    assert (dream["ball visible"] * 6) == pytest.approx(round(dream["ball visible"] * 6))  # all or none per game
    # The real game pays exactly when bricks go (bricks drop one step at a time, their reward with them).
    assert real["rewards"] == int((out["real_rewards"][:, 1:] != 0).sum())
    assert real["rewards within 1 step of a brick loss"] == real["rewards"]
    assert real["brick-loss events"] >= real["rewards"] - 1
    assert real["mean return"] == pytest.approx(out["real_rewards"].sum(axis=1).mean())
