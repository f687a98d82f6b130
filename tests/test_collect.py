"""The collector: index convention against a replay, appending, progress output, and surviving SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dws_gym.agents import ActorCritic, PolicyConfig, save_policy
from dws_gym.collect import CollectArgs, collect
from dws_gym.data import TrajectoryStore
from dws_gym.envs import make_real_env


@pytest.mark.parametrize("env_id", ["ALE/Breakout-v5", "procgen/coinrun"])
def test_stored_frames_follow_actions(tmp_path, env_id):
    """obs[t+1] in the store is exactly the frame the env returns after action[t] (replayed from the same seed)."""
    out = tmp_path / "store"
    collect(CollectArgs(env_id=env_id, steps=300, out=str(out), num_envs=1, seed=7, progress=False))
    store = TrajectoryStore(out)
    ep = store.episode(store.episode_ids()[0])
    env = make_real_env(env_id, num_envs=1, distribution_mode="easy") if "procgen" in env_id else make_real_env(env_id)
    obs, _ = env.reset(seed=7)
    np.testing.assert_array_equal(ep["obs"][0], obs[0])
    T = len(ep["actions"])
    for t in range(T):
        obs, reward, term, trunc, _ = env.step(ep["actions"][t : t + 1])
        assert reward[0] == ep["rewards"][t] and term[0] == ep["terminated"][t]
        if t + 1 < ep["obs"].shape[0]:
            np.testing.assert_array_equal(ep["obs"][t + 1], obs[0])
    meta = store.meta(store.episode_ids()[0])
    assert meta.env_id == env_id and meta.policy == "random"
    # the game's own end loses the final frame (Procgen's reset; ale-py returns the step before's): only an
    # episode the collector cut keeps its last frame
    assert meta.final_frame_known == bool(meta.extra.get("cut_by_collector"))
    if "procgen" in env_id:
        assert meta.extra["levels"]["distribution_mode"] == "easy"
    else:
        assert meta.extra["repeat_action_probability"] == 0.0  # how the stored actions were executed
    for i in store.episode_ids():
        m = store.meta(i)
        assert m.num_frames == m.length + int(m.final_frame_known)


def test_append_never_overwrites(tmp_path):
    out = tmp_path / "store"
    first = collect(CollectArgs(steps=200, out=str(out), num_envs=2, seed=0, progress=False))
    store = TrajectoryStore(out)
    before = {i: store.obs(i).copy() for i in store.episode_ids()}
    second = collect(CollectArgs(steps=200, out=str(out), num_envs=2, seed=1, progress=False))
    store.refresh()
    assert set(first.episode_ids).isdisjoint(second.episode_ids)
    assert len(store) == len(first.episode_ids) + len(second.episode_ids)
    assert store.num_steps == first.steps + second.steps
    for i, frames in before.items():
        np.testing.assert_array_equal(store.obs(i), frames)
    assert first.steps >= 200 and first.bytes_on_disk > 0


def test_rerun_into_same_store_draws_fresh_seeds(tmp_path):
    """Re-running with the same arguments appends new episodes, not copies of earlier ones (copies would land in the
    held-out split and leak training data into evaluation); a fresh store with the same seed still reproduces."""
    kwargs = dict(steps=16, num_envs=1, seed=0, progress=False)
    first = collect(CollectArgs(out=str(tmp_path / "a"), **kwargs))
    second = collect(CollectArgs(out=str(tmp_path / "a"), **kwargs))
    fresh = collect(CollectArgs(out=str(tmp_path / "b"), **kwargs))
    store, other = TrajectoryStore(tmp_path / "a"), TrajectoryStore(tmp_path / "b")
    earlier = [store.obs(i) for i in first.episode_ids]
    for i in second.episode_ids:
        assert not any(np.array_equal(store.obs(i), o) for o in earlier)
    assert (first.seed, second.seed, fresh.seed) == (0, 1, 0)
    for i in second.episode_ids:
        assert {k: store.meta(i).extra[k] for k in ("seed", "num_envs", "env_index")} == {
            "seed": 1, "num_envs": 1, "env_index": 0}
    assert len(fresh.episode_ids) == len(first.episode_ids)
    for a, b in zip(first.episode_ids, fresh.episode_ids):
        np.testing.assert_array_equal(store.obs(a), other.obs(b))
        np.testing.assert_array_equal(store.episode(a)["actions"], other.episode(b)["actions"])
        assert store.meta(a).extra == other.meta(b).extra


def test_collect_with_policy_checkpoint(tmp_path):
    env = make_real_env("ALE/Breakout-v5", frame_stack=2)
    cfg = PolicyConfig.from_spaces(env.single_observation_space, env.single_action_space, arch="nature",
                                   env_id="ALE/Breakout-v5", action_meanings=env.action_meanings)
    save_policy(ActorCritic(cfg), tmp_path / "policy")
    result = collect(CollectArgs(steps=64, out=str(tmp_path / "s"), num_envs=2, policy=str(tmp_path / "policy"),
                                 progress=False))
    store = TrajectoryStore(tmp_path / "s")
    assert result.steps >= 64
    meta = store.meta(store.episode_ids()[0])
    assert meta.policy == "policy:policy" and meta.obs_shape == (64, 64, 3)


def test_cli_reports_speed(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dws_gym.collect", "--env-id", "procgen/ninja", "--steps", "100",
         "--out", str(tmp_path / "s"), "--num-envs", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "steps/s" in proc.stdout and "MB on disk" in proc.stdout


def test_sigkilled_collector_leaves_clean_store(tmp_path):
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "dws_gym.collect", "--env-id", "ALE/Breakout-v5", "--steps", "10000000",
           "--out", str(out), "--num-envs", "4", "--no-progress"]
    for round_ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                n = len(list((out / "episodes").glob("*"))) if (out / "episodes").exists() else 0
                if n >= 3 * (round_ + 1):
                    break
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        store = TrajectoryStore(out)  # on_corrupt="raise": any partial episode would fail here
        assert len(store) >= 3 * (round_ + 1)
        for ep_id in store.episode_ids():
            ep = store.episode(ep_id)
            T = len(ep["actions"])
            frames = T + int(store.meta(ep_id).final_frame_known)  # a game-ended ALE episode has no final frame
            assert ep["obs"].shape == (frames, 64, 64, 3) and ep["obs"][-1].std() > 0
            assert ep["terminated"][-1], "only finished games are written before the step budget is reached"
        clips = store.clips(context=4, horizon=4)
        assert clips.sample(8, np.random.default_rng(0))["frames"].shape == (8, 8, 64, 64, 3)


def test_console_script_exits_zero(tmp_path):
    """`dws-collect` (installed by pip) must exit 0: a console script's return value becomes its exit status."""
    script = Path(sys.executable).with_name("dws-collect")
    if not script.exists():
        pytest.skip("dws-collect is not installed next to this interpreter")
    proc = subprocess.run([str(script), "--steps", "20", "--num-envs", "2", "--out", str(tmp_path / "s"),
                           "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "collected" in proc.stdout
