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
    SimState,
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


def _scoring_sim() -> Simulator:
    """A tiny simulator whose reward head is perturbed too, so its scores vary with the frames."""
    sim = tiny_sim(perturb=True)
    with torch.no_grad():
        for p in sim.reward_head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return sim


@pytest.mark.parametrize("memory_frames", [None, 1])
def test_rolling_cache_steps_like_the_uncached_path_over_50_steps_with_resets(memory_frames):
    sim = _scoring_sim()
    sim.reward_head.config.memory_frames = memory_frames  # a head that reads only the last frame caches alike
    n = 4
    cached = sim.init_state(sim.start_frames[:n], sim.start_actions[:n])
    plain = sim.init_state(sim.start_frames[:n], sim.start_actions[:n], cache=False)
    assert cached.head_tokens is not None and plain.head_tokens is None
    g_cached, g_plain = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    rng = np.random.default_rng(0)
    rewards = []
    for step in range(50):
        if step in (17, 33):  # restart some envs mid-run from other start clips
            mask = torch.tensor([True, False, step == 33, False])
            pick = rng.integers(0, len(sim.start_frames), int(mask.sum()))
            cached = sim.reset_where(cached, mask, sim.start_frames[pick], sim.start_actions[pick])
            plain = sim.reset_where(plain, mask, sim.start_frames[pick], sim.start_actions[pick])
        a = torch.as_tensor(rng.integers(0, 4, n))
        f1, r1, t1, cached = sim.step(cached, a, generator=g_cached, sample_reward=True)
        f2, r2, t2, plain = sim.step(plain, a, generator=g_plain, sample_reward=True)
        assert torch.equal(f1, f2) and torch.equal(r1, r2) and torch.equal(t1, t2)
        # the rolling tokens are the tokens of the state's frames, whatever their history
        torch.testing.assert_close(cached.head_tokens, sim.reward_head.frame_tokens(cached.frames),
                                   atol=1e-5, rtol=1e-5)
        rewards.append(r1)
    assert plain.head_tokens is None and torch.equal(cached.frames, plain.frames)
    assert len(torch.cat(rewards).unique()) > 1  # the scores moved: the comparison is not between constants
    # the head's scores themselves, cached and not, on the last transition
    a = torch.arange(n) % 4
    frame = sim.world_model.sample_next(cached.frames, cached.actions, a, generator=torch.Generator().manual_seed(1))
    full = sim.reward_head.logits(cached.frames, a, frame)
    tokens = torch.cat([cached.head_tokens, sim.reward_head.frame_tokens(frame[:, None])], dim=1)
    rolled = sim.reward_head.logits_from_tokens(tokens, a)
    torch.testing.assert_close(rolled.reward_logits, full.reward_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rolled.termination_logit, full.termination_logit, atol=1e-5, rtol=1e-5)


def test_rolling_cache_memory_is_flat_and_follows_a_precision_change():
    sim = _scoring_sim()
    state = sim.init_state(sim.start_frames, sim.start_actions)
    g = torch.Generator().manual_seed(0)
    sizes = []
    for step in range(300):
        _, _, _, state = sim.step(state, [step % 4] * 5, generator=g)
        if step in (9, 299):
            sizes.append(sum(t.untyped_storage().nbytes() for t in (state.frames, state.actions, state.head_tokens)))
    assert sizes[0] == sizes[1]  # nothing accumulates: the oldest frame's tokens leave as the newest arrive
    assert tuple(state.head_tokens.shape) == (5, K, sim.reward_head.num_tokens, sim.reward_head.config.dim)
    sim.set_precision("bf16")  # the fp32 cache no longer fits the head: embedded again, not mixed
    frame, reward, _, new = sim.step(state, [1] * 5, generator=g)
    assert new.head_tokens.dtype == torch.bfloat16 and reward.dtype == torch.float32


def test_state_rows_and_set_rows_keep_the_cache_aligned():
    sim = _scoring_sim()
    state = sim.init_state(sim.start_frames, sim.start_actions)
    idx = torch.tensor([1, 3])
    sub = state.rows(idx)
    assert sub.num_envs == 2 and torch.equal(sub.head_tokens, state.head_tokens[idx])
    _, _, _, new = sim.step(sub, [2, 2], generator=torch.Generator().manual_seed(0))
    state.set_rows(idx, new)
    assert torch.equal(state.frames[idx], new.frames) and torch.equal(state.head_tokens[idx], new.head_tokens)
    state.set_rows(idx, SimState(new.frames, new.actions))  # an uncached row: the whole cache is dropped
    assert state.head_tokens is None
