"""The faster Breakout simulator that ships next to the default: found by name, smaller, its card's verdicts hold."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import dws_gym
from dws_gym.evaluation import MIN_REWARD_RECALL
from dws_gym.simulator import Simulator


@pytest.fixture(scope="module")
def fast() -> Simulator:
    return Simulator.from_pretrained(dws_gym.shipped_simulator("breakout-fast"))


@pytest.fixture(scope="module")
def default() -> Simulator:
    return Simulator.from_pretrained(dws_gym.shipped_simulator("breakout"))


def test_shipped_simulator_names_the_folders_and_refuses_unknown_names():
    folder = dws_gym.shipped_simulator("breakout-fast")
    assert folder.is_dir() and folder.is_relative_to(next(iter(dws_gym.__path__)))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, f"{size / 2**20:.1f} MiB"
    for bad in ("breakout-slow", "", "../breakout", "breakout/world_model"):
        with pytest.raises(FileNotFoundError, match="breakout-fast"):
            dws_gym.shipped_simulator(bad)


def test_it_is_a_narrower_student_of_the_default(fast, default):
    assert fast.config.env_id == default.config.env_id == "ALE/Breakout-v5"
    assert fast.config.action_meanings == default.config.action_meanings
    assert tuple(fast.world_model.config.widths) == (16, 32, 64)
    assert tuple(default.world_model.config.widths) == (32, 64, 128)
    # its head is no larger than the default's (both: one block on 16 x 16-pixel patches)
    assert fast.reward_head.config.depth <= default.reward_head.config.depth
    assert fast.reward_head.num_tokens <= default.reward_head.num_tokens
    assert fast.world_model.num_parameters() < default.world_model.num_parameters() / 2
    assert "--distill-from dws_gym/assets/simulators/breakout" in fast.config.training["command"]


def test_recorded_verdicts_hold(fast):
    metrics = fast.config.metrics
    assert metrics["horizon"] == 15 and metrics["num_clips"] >= 100
    assert all(ok is True for ok in metrics["acceptance"].values()), metrics["acceptance"]
    events = metrics["events"]["overall"]["reward"]
    assert events["real"] > 0 and events["dreamed"] > 0
    assert metrics["event_acceptance"]["reward_recall"] is (events["recall"] >= MIN_REWARD_RECALL)
    assert metrics["event_acceptance"]["closed_loop_return"] is True
    card = (dws_gym.shipped_simulator("breakout-fast") / "README.md").read_text()
    limits = " ".join(fast.config.training["known_limits"])
    assert metrics["table_markdown"] in card and "faster" in limits
    assert all(line in card for line in fast.config.training["known_limits"])  # under the card's Limitations
    if events["recall"] < MIN_REWARD_RECALL:  # an opt-in simulator may sit under the bar, but its card must say so
        assert f"recall {events['recall']:.3f}" in limits and "reward_recall verdict therefore fails" in limits


def test_dream_env_steps_it_by_name():
    envs = gym.make_vec("dws/Breakout-v0", num_envs=3, simulator=dws_gym.shipped_simulator("breakout-fast"),
                        dtype="fp32")
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8
        for _ in range(3):
            obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
        assert obs.shape == (3, 64, 64, 3) and np.isfinite(reward).all()
    finally:
        envs.close()
