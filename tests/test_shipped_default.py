"""The simulator that ships with the package: `dws/Breakout-v0` works with no download and no simulator= argument."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import dws_gym
from dws_gym.envs.registration import DREAM_GAMES
from dws_gym.play import PlayArgs, play_headless
from dws_gym.simulator import Simulator

FOLDER = DREAM_GAMES["dws/Breakout-v0"].default_simulator


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator.from_pretrained(FOLDER)


def test_it_is_inside_the_package_and_small():
    assert FOLDER.is_dir() and FOLDER.is_relative_to(next(iter(dws_gym.__path__)))
    size = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MiB"


def test_card_states_its_training_command_and_held_out_table(sim):
    card = (FOLDER / "README.md").read_text()
    assert sim.config.env_id == "ALE/Breakout-v5" and sim.config.action_meanings == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert "python train_world_model.py" in card and "not pre-trained" in card
    metrics = sim.config.metrics
    assert metrics["horizon"] == 15 and metrics["num_clips"] >= 100
    assert metrics["table_markdown"] in card  # the recorded table is the one the card shows
    acceptance = metrics["acceptance"]
    assert acceptance == {**acceptance, "psnr_not_below_copy": True, "moving_mse_below_copy": True,
                          "action_sensitive": True}
    assert sim.config.backbone == "unet" and "scripted:breakout-tracker" in sim.config.training["data"]
    assert "bf16" in sim.config.training["precision"] or "fp32" in sim.config.training["precision"]


def test_card_records_reward_events_and_closed_loop_returns(sim):
    metrics = sim.config.metrics
    events = metrics["event_acceptance"]
    # >= 0.6 of the held-out reward events dreamed within one step, >= 0.5 of the dreamed ones real
    assert events["reward_recall"] is True and events["reward_precision"] is True
    closed = metrics["closed_loop"]  # measured and recorded (the card says why it fails from a reset)
    assert closed["episodes"] == 100 and closed["steps"] == 100 and closed["real_mean"] > 0


def test_gym_make_without_arguments_steps_and_passes_check_env():
    env = gym.make("dws/Breakout-v0", device="cpu")
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and "start_id" in info
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs.shape == (64, 64, 3) and np.isfinite(reward)
    env.close()


def test_make_vec_is_seeded_and_reproducible():
    runs = []
    for _ in range(2):
        envs = gym.make_vec("dws/Breakout-v0", num_envs=3, device="cpu")
        obs, _ = envs.reset(seed=5)
        frames = [obs]
        for t in range(3):
            obs, *_ = envs.step(np.array([t % 4, 2, 3]))
            frames.append(obs)
        envs.close()
        runs.append(np.stack(frames))
    assert np.array_equal(runs[0], runs[1])
    envs = gym.make_vec("dws/Breakout-v0", num_envs=3, device="cpu")
    other, _ = envs.reset(seed=6)
    envs.close()
    assert not np.array_equal(other, runs[0][0])  # another seed draws other start clips


def _first_real_brick_hit():
    """A real Breakout transition that pays a reward, with its 4 context frames and the 3 actions between them."""
    from dws_gym.envs.real import make_real_env
    from dws_gym.scripted import BreakoutTracker

    env = make_real_env("ALE/Breakout-v5", 1)
    policy = BreakoutTracker(eps=0.0, seed=0)
    obs, _ = env.reset(seed=3)
    frames, actions = [obs[0]], []
    for _ in range(2000):
        a = policy.act(obs)
        obs, reward, term, trunc, _ = env.step(a)
        frames.append(obs[0])
        actions.append(int(a[0]))
        if reward[0] > 0 and len(frames) >= 5:
            env.close()
            return np.stack(frames[-5:-1]), np.array(actions[-4:-1]), int(actions[-1]), frames[-1]
    raise AssertionError("no reward in 2000 scripted steps")


@torch.no_grad()
def test_reward_head_pays_a_real_brick_hit_and_the_dream_does_too(sim):
    context, ctx_actions, action, next_frame = _first_real_brick_hit()
    reward, _ = sim.reward_head.predict(torch.from_numpy(context)[None], torch.tensor([action]),
                                        torch.from_numpy(next_frame)[None])
    assert reward.item() > 0
    # the same step dreamed from the real context: a reward within one step of the real one
    state = sim.init_state(context[None], ctx_actions[None])
    paid = []
    for a in (action, 0):
        _, r, _, state = sim.step(state, [a], generator=torch.Generator().manual_seed(0))
        paid.append(r.item())
    assert max(paid) > 0, paid


@torch.no_grad()
def test_actions_move_the_dreamed_paddle(sim):
    """From the same real start clips, RIGHT and LEFT held for a few steps leave different paddle rows."""
    n = min(8, sim.start_frames.shape[0])
    rows = {}
    for action in (2, 3):  # RIGHT, LEFT
        state = sim.init_state(sim.start_frames[:n], sim.start_actions[:n])
        g = torch.Generator().manual_seed(0)
        for _ in range(4):
            frame, _, _, state = sim.step(state, torch.full((n,), action), generator=g)
        rows[action] = frame[:, 55:61].float()
    assert (rows[2] - rows[3]).abs().mean() > 1.0  # mean absolute difference in 0..255 units


def test_headless_play_records_both_sides(tmp_path):
    result = play_headless(PlayArgs(env_id="dws/Breakout-v0", headless=True, episodes=2, max_steps=4,
                                    out=str(tmp_path / "dream.gif"), device="cpu"))
    assert result.path.is_file() and result.num_frames == 5
    assert result.real_returns.shape == result.dream_returns.shape == (2,)
