"""Policy evaluation: every env plays its share of the episodes, so short episodes are not favoured."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from dws_gym.agents import RandomPolicy
from dws_gym.policy_eval import evaluate_policy, run_episodes


class FixedLength(gym.Env):
    """An episode of exactly ``length`` steps paying 1 per step (so return == length)."""

    observation_space = gym.spaces.Box(0, 255, (4,), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int) -> None:
        self.length, self.t = length, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.zeros(4, np.uint8), 1.0, self.t >= self.length, False, {}


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_each_env_plays_its_quota_so_long_episodes_count(mode):
    envs = SyncVectorEnv([lambda: FixedLength(2), lambda: FixedLength(10)], autoreset_mode=mode)
    policy = RandomPolicy(2, seed=0)
    returns, lengths = run_episodes(policy, envs, 4)
    # The first four episodes to end are all the short env's; a quota of two each keeps both kinds.
    assert sorted(lengths) == [2, 2, 10, 10] and sorted(returns) == [2.0, 2.0, 10.0, 10.0]
    returns, lengths = run_episodes(policy, envs, 3)  # an odd count: the first env plays one more
    assert sorted(lengths) == [2, 2, 10]
    returns, lengths = run_episodes(policy, envs, 4, max_steps=5)  # the long env is cut at 5 steps and stops
    assert sorted(lengths) == [2, 2, 5]
    envs.close()


def test_real_env_evaluation_reports_the_requested_episodes():
    returns, lengths = evaluate_policy(RandomPolicy(4, seed=0), "ALE/Breakout-v5", 3, num_envs=2, max_steps=2_000)
    assert len(returns) == len(lengths) == 3 and all(n > 0 for n in lengths)
