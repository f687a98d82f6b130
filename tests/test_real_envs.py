"""Real Atari / Procgen vector envs: format, action meanings, flags, frame stacking, errors."""

import numpy as np
import pytest
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode, VectorEnv

from dws_gym.envs import FRAME_SHAPE, make_real_env, parse_env_id, supported_env_ids

IDS = ["ALE/Breakout-v5", "ALE/BattleZone-v5", "procgen/coinrun", "procgen/ninja"]


@pytest.mark.parametrize("env_id", IDS)
def test_identical_frame_format(env_id):
    envs = make_real_env(env_id, num_envs=3)
    obs, info = envs.reset(seed=1)
    assert isinstance(envs, VectorEnv)
    assert envs.single_observation_space == Box(0, 255, FRAME_SHAPE, np.uint8)
    assert obs.shape == (3, *FRAME_SHAPE) and obs.dtype == np.uint8
    assert isinstance(envs.single_action_space, Discrete)
    obs2, rew, term, trunc, info = envs.step(envs.action_space.sample())
    assert obs2.shape == (3, *FRAME_SHAPE) and obs2.dtype == np.uint8
    assert rew.dtype == np.float32 and term.dtype == bool and trunc.dtype == bool
    assert info["life_lost"].shape == (3,) and info["life_lost"].dtype == bool
    assert obs2.std() > 0  # a real rendered frame, not a blank buffer
    envs.close()


def test_action_meanings():
    breakout = make_real_env("ALE/Breakout-v5")
    assert breakout.action_meanings == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert breakout.single_action_space.n == 4
    battlezone = make_real_env("ALE/BattleZone-v5")
    assert battlezone.single_action_space.n == 18 and battlezone.action_meanings[-1] == "DOWNLEFTFIRE"
    coinrun = make_real_env("procgen/coinrun")
    assert coinrun.single_action_space.n == 15
    assert coinrun.action_meanings[:5] == ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP"]
    assert coinrun.action_meanings[-1] == "E"


def test_metadata_is_per_instance():
    a = make_real_env("ALE/Breakout-v5")
    b = make_real_env("procgen/coinrun")
    assert a.metadata is not b.metadata and a.metadata is not VectorEnv.metadata
    assert a.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert b.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    assert "autoreset_mode" not in VectorEnv.metadata


@pytest.mark.parametrize("env_id", ["ALE/Breakout-v5", "procgen/coinrun"])
def test_seeded_reset_is_reproducible(env_id):
    runs = []
    for _ in range(2):
        envs = make_real_env(env_id, num_envs=2)
        obs, _ = envs.reset(seed=123)
        frames = [obs]
        rng = np.random.default_rng(0)
        for _ in range(20):
            obs, *_ = envs.step(rng.integers(0, envs.single_action_space.n, size=2))
            frames.append(obs)
        runs.append(np.stack(frames))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_ale_life_loss_and_termination():
    envs = make_real_env("ALE/Breakout-v5", num_envs=1)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    losses = 0
    for _ in range(5000):
        _, _, term, trunc, info = envs.step(rng.integers(0, 4, size=1))
        losses += int(info["life_lost"][0])
        if term[0] or trunc[0]:
            break
    assert term[0] and not trunc[0], "a random Breakout game ends by game over"
    assert losses == 5, "Breakout starts with 5 lives; every one lost is flagged, the last with termination"
    assert info["life_lost"][0]


def test_ale_truncation_is_not_termination():
    # NOOP never launches the ball: no life is lost and only the frame cap can end the episode.
    envs = make_real_env("ALE/Breakout-v5", num_envs=2, max_num_frames_per_episode=400)
    envs.reset(seed=0)
    for step in range(200):
        _, _, term, trunc, info = envs.step(np.zeros(2, dtype=np.int64))
        assert not term.any() and not info["life_lost"].any()
        if trunc.all():
            break
    assert trunc.all() and step < 150


def test_procgen_timeout_is_truncation():
    envs = make_real_env("procgen/coinrun", num_envs=4, distribution_mode="easy")
    envs.reset(seed=0)
    length = np.zeros(4, dtype=int)
    ends = []
    noop = np.full(4, envs.action_meanings.index("NOOP"))
    for _ in range(1005):
        _, _, term, trunc, info = envs.step(noop)
        length += 1
        for i in np.flatnonzero(term | trunc):
            ends.append((int(length[i]), bool(term[i]), bool(trunc[i])))
            assert not info["final_frame_known"][i] and info["_final_frame_known"][i]
        length[term | trunc] = 0
    assert any(t for _, _, t in ends), "standing still in coinrun hits the 1000-step timeout"
    for n, term, trunc in ends:
        assert term != trunc
        assert trunc == (n == 1000)


def test_frame_stack_next_step_and_same_step():
    for env_id in ["ALE/Breakout-v5", "procgen/coinrun"]:
        plain = make_real_env(env_id, num_envs=2)
        stacked = make_real_env(env_id, num_envs=2, frame_stack=3)
        assert stacked.single_observation_space.shape == (3, *FRAME_SHAPE)
        o1, _ = plain.reset(seed=5)
        o3, _ = stacked.reset(seed=5)
        assert o3.shape == (2, 3, *FRAME_SHAPE)
        for k in range(3):
            np.testing.assert_array_equal(o3[:, k], o1)
        rng = np.random.default_rng(1)
        history = [o1]
        for _ in range(3):
            a = rng.integers(0, plain.single_action_space.n, size=2)
            o1, *_ = plain.step(a)
            o3, *_ = stacked.step(a)
            history.append(o1)
            np.testing.assert_array_equal(o3[:, -1], o1)
        np.testing.assert_array_equal(o3, np.stack(history[-3:], axis=1))
        assert stacked.action_meanings == plain.action_meanings


def test_frame_stack_refills_after_episode_end():
    envs = make_real_env("ALE/Breakout-v5", num_envs=1, frame_stack=2, max_num_frames_per_episode=40)
    envs.reset(seed=0)
    for _ in range(30):
        obs, _, term, trunc, _ = envs.step(np.zeros(1, dtype=np.int64))
        if trunc[0]:
            break
    assert trunc[0]
    obs, *_ = envs.step(np.zeros(1, dtype=np.int64))  # NEXT_STEP: the reset step
    np.testing.assert_array_equal(obs[0, 0], obs[0, 1])


def test_bad_ids_list_supported():
    for bad in ["ALE/NoSuchGame-v5", "procgen/notagame", "CartPole-v1", "Breakout"]:
        with pytest.raises(ValueError, match="procgen/coinrun|Supported"):
            make_real_env(bad)
    assert parse_env_id("ALE/MontezumaRevenge-v5") == ("ale", "montezuma_revenge")
    ids = supported_env_ids()
    assert "ALE/Breakout-v5" in ids and "procgen/ninja" in ids


def test_bad_actions_and_options():
    envs = make_real_env("ALE/Breakout-v5", num_envs=2)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.zeros(2, dtype=np.int64))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        envs.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        envs.step(np.array([0, 4]))
    with pytest.raises(ValueError, match="integers"):
        envs.step(np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="SAME_STEP"):
        make_real_env("procgen/coinrun", autoreset_mode="NextStep")
    with pytest.raises(ValueError, match="frame_stack"):
        make_real_env("ALE/Breakout-v5", frame_stack=0)
