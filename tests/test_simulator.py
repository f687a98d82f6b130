"""The Simulator: the step protocol, input validation, save / load, Hub resolution and the model card."""

import json

import numpy as np
import pytest
import torch

from dws_gym.models.reward import RewardConfig, RewardHead
from dws_gym.simulator import (
    CONFIG_NAME,
    REWARD_NAME,
    START_STATES_NAME,
    WORLD_MODEL_DIR,
    Simulator,
)
from tiny_sim import make_tiny_sim

K = 3
MEANINGS = ["NOOP", "FIRE", "RIGHT", "LEFT"]


def tiny_sim(seed: int = 0, perturb: bool = False) -> Simulator:
    return make_tiny_sim(seed, context=K, perturb=perturb, sampling_steps=2, num_starts=5)


def test_step_protocol_shapes_and_rolling_state():
    sim = tiny_sim(perturb=True)
    state = sim.init_state(sim.start_frames[:4], sim.start_actions[:4])
    g = torch.Generator().manual_seed(0)
    frame, reward, terminated, new = sim.step(state, np.array([0, 1, 2, 3]), generator=g)
    assert frame.shape == (4, 64, 64, 3) and frame.dtype == torch.uint8
    assert reward.shape == (4,) and reward.dtype == torch.float32
    assert terminated.shape == (4,) and terminated.dtype == torch.bool
    assert torch.equal(new.frames[:, -1], frame) and torch.equal(new.frames[:, :-1], state.frames[:, 1:])
    assert new.actions[:, -1].tolist() == [0, 1, 2, 3]
    assert torch.equal(new.actions[:, :-1], state.actions[:, 1:])


def test_fresh_simulator_copies_last_frame():
    sim = tiny_sim()
    state = sim.init_state(sim.start_frames, sim.start_actions)
    frame, *_ = sim.step(state, [1] * 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(frame, state.frames[:, -1])


def test_step_is_reproducible_with_generator():
    sim = tiny_sim(perturb=True)
    outs = []
    for _ in range(2):
        state = sim.init_state(sim.start_frames, sim.start_actions)
        g = torch.Generator().manual_seed(11)
        for a in ([0] * 5, [2] * 5):
            frame, reward, term, state = sim.step(state, a, generator=g, sample_reward=True)
        outs.append((frame, reward, term))
    for x, y in zip(*outs):
        assert torch.equal(x, y)


def test_a_game_that_ends_on_every_reward_ends_the_dream_on_a_dreamed_reward():
    """With ``reward_ends_episode`` every paid step terminates, also when only one of reward and termination is
    sampled (the two come from different calls and are merged)."""
    sim = tiny_sim(perturb=True)
    head = sim.reward_head
    head.config.reward_ends_episode = True
    with torch.no_grad():  # pays about half the time when sampled, never terminates on its own
        head.reward_out.weight.zero_()
        head.reward_out.bias.copy_(torch.tensor([-20.0, 0.0, 0.0]))
        head.termination_out.weight.zero_()
        head.termination_out.bias.fill_(-20.0)
    state = sim.init_state(sim.start_frames, sim.start_actions)
    paid = 0
    for flags in ({}, {"sample_reward": True}, {"sample_termination": True},
                  {"sample_reward": True, "sample_termination": True}):
        for seed in range(4):
            _, reward, term, _ = sim.step(state, [1] * 5, generator=torch.Generator().manual_seed(seed), **flags)
            assert torch.equal(term, reward != 0), flags
            paid += int((reward != 0).sum())
    assert paid > 0
    head.config.reward_ends_episode = False
    _, reward, term, _ = sim.step(state, [1] * 5, generator=torch.Generator().manual_seed(0), sample_reward=True)
    assert (reward != 0).any() and not term.any()


def test_reset_where_replaces_only_masked_envs():
    sim = tiny_sim()
    state = sim.init_state(sim.start_frames[:3], sim.start_actions[:3])
    mask = np.array([False, True, False])
    new_frames = np.zeros((3, K, 64, 64, 3), np.uint8)
    new_actions = np.full((3, K - 1), 3)
    new = sim.reset_where(state, mask, new_frames, new_actions)
    assert torch.equal(new.frames[[0, 2]], state.frames[[0, 2]])
    assert int(new.frames[1].max()) == 0 and new.actions[1].tolist() == [3] * (K - 1)
    only = sim.reset_where(state, mask, new_frames[:1], new_actions[:1])  # one clip per True entry
    assert torch.equal(only.frames, new.frames)
    with pytest.raises(ValueError, match="one clip per"):
        sim.reset_where(state, mask, new_frames[:2], new_actions[:2])
    with pytest.raises(ValueError, match="mask must be bool"):
        sim.reset_where(state, np.array([0, 1, 0]), new_frames, new_actions)


def test_bad_actions_and_frames_say_what_is_wrong():
    sim = tiny_sim()
    state = sim.init_state(sim.start_frames[:2], sim.start_actions[:2])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sim.step(state, [0, 1, 2])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        sim.step(state, [0, 4])
    with pytest.raises(ValueError, match="NaN"):
        sim.step(state, np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="integer"):
        sim.step(state, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="dtype object"):
        sim.step(state, [None, 1])
    with pytest.raises(ValueError, match=r"positions \[1\]: \[1e\+30\]"):
        sim.step(state, np.array([0.0, 1e30]))
    with pytest.raises(ValueError, match="uint8"):
        sim.init_state(sim.start_frames[:2].float(), sim.start_actions[:2])
    with pytest.raises(ValueError, match=f"the last {K} frames"):
        sim.init_state(sim.start_frames[:2, :2], sim.start_actions[:2])


def test_save_load_identical_and_strict(tmp_path):
    sim = tiny_sim(perturb=True)
    folder = sim.save_pretrained(tmp_path / "sim")
    assert {p.name for p in folder.iterdir()} == {CONFIG_NAME, WORLD_MODEL_DIR, REWARD_NAME, START_STATES_NAME,
                                                  "README.md"}
    loaded = Simulator.from_pretrained(folder)
    assert loaded.config == sim.config
    for s in (sim, loaded):
        state = s.init_state(s.start_frames, s.start_actions)
        s._out = s.step(state, [1, 2, 3, 0, 1], generator=torch.Generator().manual_seed(5))
    for x, y in zip(sim._out[:3], loaded._out[:3]):
        assert torch.equal(x, y)
    # a re-save replaces the folder only once the new one is complete
    sim.save_pretrained(folder)
    assert Simulator.from_pretrained(folder).config == sim.config


def test_load_errors_name_the_problem(tmp_path):
    sim = tiny_sim()
    folder = sim.save_pretrained(tmp_path / "sim")
    (folder / REWARD_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=REWARD_NAME):
        Simulator.from_pretrained(folder)
    folder = sim.save_pretrained(tmp_path / "sim2")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["format_version"] = 99
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format_version"):
        Simulator.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        Simulator.from_pretrained("nobody/no-such-simulator")
    (tmp_path / "not_a_sim").mkdir()
    (tmp_path / "not_a_sim" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a simulator folder; choose another path"):
        sim.save_pretrained(tmp_path / "not_a_sim")
    assert (tmp_path / "not_a_sim" / "keep.txt").read_text() == "mine"


def test_mismatched_parts_are_rejected():
    sim = tiny_sim()
    head = RewardHead(RewardConfig(context_frames=K + 1, num_actions=4, dim=16, depth=1, num_heads=2))
    with pytest.raises(ValueError, match="context frames"):
        Simulator(sim.config, sim.world_model, head, sim.start_frames, sim.start_actions)
    with pytest.raises(ValueError, match="start_frames"):
        Simulator(sim.config, sim.world_model, sim.reward_head, sim.start_frames[:, :2], sim.start_actions)


def test_model_card_is_what_would_be_uploaded(tmp_path):
    sim = tiny_sim()
    sim.config.metrics = {"table_markdown": "| h | psnr model | psnr copy |\n|---|---|---|\n| 1 | 30 | 29 |"}
    folder = sim.save_pretrained(tmp_path / "upload")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: dws-gym")
    assert "ALE/Breakout-v5" in card and "**not pre-trained**" in card
    assert "0: NOOP, 1: FIRE, 2: RIGHT, 3: LEFT" in card and "| 1 | 30 | 29 |" in card
    sim.config.pretrained_backbone = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    card = sim.model_card()
    assert "Fine-tuned with DWS from `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`: a text-to-video" in card
    assert "pre-trained by its authors on large-scale image and video data" in card and "stepping speed" in card
