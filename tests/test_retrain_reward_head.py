"""python -m dws_gym.retrain_reward_head: a saved simulator's head trained again on real and dreamed transitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_sim import BREAKOUT, make_breakout_store, make_tiny_sim

from dws_gym.data.store import TrajectoryStore
from dws_gym.retrain_reward_head import main
from dws_gym.simulator import Simulator

SMALL = ["--steps", "2", "--batch-size", "8", "--dream-windows", "3", "--dream-horizon", "2", "--no-progress"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    make_breakout_store(root / "store")
    sim = make_tiny_sim(0)
    sim.config.training = {"command": "python train_world_model.py --data store"}
    sim.config.metrics = {"table_markdown": "| h | ... |"}
    sim.save_pretrained(root / "sim")
    return root


def test_new_head_on_dreams_keeps_the_world_model_and_extends_the_story(folders, tmp_path, capsys):
    out = main(["--simulator", str(folders / "sim"), "--data", str(folders / "store"), "--out", str(tmp_path / "new"),
                "--dream-share", "0.5", "--keep-below", "0.03"] + SMALL)
    assert "dreamed transitions from 3 training windows" in capsys.readouterr().out
    before, after = Simulator.from_pretrained(folders / "sim"), Simulator.from_pretrained(out)
    for (name, a), b in zip(before.world_model.state_dict().items(), after.world_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(before.reward_head.state_dict().values(),
                                                     after.reward_head.state_dict().values()))
    command = after.config.training["command"]
    assert command.startswith("python train_world_model.py --data store && python -m dws_gym.retrain_reward_head ")
    assert "--dream-share 0.5" in command and "50% of each batch dreamed" in after.config.training["reward_head_data"]
    assert after.world_model.config.keep_below == 0.03  # the threshold it dreamed with is the one it steps with
    assert after.config.metrics == {}  # the old table scored the old head
    assert after.reward_head.config.reward_logit_offset is not None  # prior correction of the oversampled batches
    frame, reward, term, _ = after.step(after.init_state(after.start_frames[:2], after.start_actions[:2]),
                                        np.array([0, 1]))
    assert frame.shape == (2, 64, 64, 3) and reward.shape == (2,)


def test_a_new_head_can_take_another_depth_patch_size_and_read_only_the_last_frame(folders, tmp_path):
    out = main(["--simulator", str(folders / "sim"), "--data", str(folders / "store"), "--out", str(tmp_path / "m1"),
                "--depth", "2", "--memory-frames", "1", "--patch-size", "16"] + SMALL)
    before, after = Simulator.from_pretrained(folders / "sim"), Simulator.from_pretrained(out)
    assert before.reward_head.config.depth == 1 and before.reward_head.config.read_frames == before.context_frames > 1
    assert after.reward_head.config.depth == 2 and after.reward_head.config.memory_frames == 1
    assert before.reward_head.config.patch_size == 8 and after.reward_head.config.patch_size == 16
    assert len(after.reward_head.blocks) == 4 and after.reward_head.num_tokens == 16
    assert ("head depth 2, 16 x 16-pixel patch tokens, cross-attention over the last 1 of"
            in after.config.training["reward_head_data"])
    state = after.init_state(after.start_frames[:2], after.start_actions[:2])
    frame, reward, term, state = after.step(state, np.array([0, 1]))
    assert frame.shape == (2, 64, 64, 3) and reward.shape == (2,) and state.head_tokens.shape[1] == after.context_frames


def test_calibrating_the_shipped_head_changes_only_its_payment_threshold(folders, tmp_path, capsys):
    out = main(["--simulator", str(folders / "sim"), "--data", str(folders / "store"), "--out", str(tmp_path / "cal"),
                "--no-train", "--calibrate-windows", "16"] + SMALL)
    printed = capsys.readouterr().out
    assert "uniformly drawn training windows" in printed and "calibrated the simulator's head" in printed
    before, after = Simulator.from_pretrained(folders / "sim"), Simulator.from_pretrained(out)
    for (name, a), b in zip(before.reward_head.state_dict().items(), after.reward_head.state_dict().values()):
        assert torch.equal(a, b), name  # the same head ...
    old = before.reward_head.config.reward_logit_offset or (0.0, 0.0, 0.0)
    new = after.reward_head.config.reward_logit_offset
    assert new[0] == old[0] and new[2] == old[2] and new[1] != old[1]  # ... with another no-reward offset
    training = after.config.training
    assert "to the real payment rate" in training["reward_head_calibration"]
    assert "--no-train --calibrate-windows 16" in training["command"] and "reward_head_data" not in training


def test_the_head_pays_what_the_game_pays(folders, tmp_path, capsys):
    """A game whose only reward is 10 (Procgen's goal) gets a head that pays 10, not the sign class's 1: the head is
    relabelled, not retrained, so its ranking of transitions stays."""
    make_breakout_store(tmp_path / "store10", value=10.0)
    out = main(["--simulator", str(folders / "sim"), "--data", str(tmp_path / "store10"),
                "--out", str(tmp_path / "ten"), "--no-train", "--calibrate-windows", "16"] + SMALL)
    assert "pays (-1.0, 0.0, 10.0)" in capsys.readouterr().out
    before, after = Simulator.from_pretrained(folders / "sim"), Simulator.from_pretrained(out)
    assert before.reward_head.config.sign_values == (-1.0, 0.0, 1.0)
    assert after.reward_head.config.sign_values == (-1.0, 0.0, 10.0)
    for (name, a), b in zip(before.reward_head.state_dict().items(), after.reward_head.state_dict().values()):
        assert torch.equal(a, b), name
    logits = torch.tensor([[0.0, 1.0, 5.0], [0.0, 5.0, 1.0], [5.0, 1.0, 0.0]])
    assert after.reward_head.reward_values(logits).tolist() == [10.0, 0.0, -1.0]


def test_candidates_keep_the_best_head_on_the_calibration_dreams(folders, tmp_path, capsys):
    out = main(["--simulator", str(folders / "sim"), "--data", str(folders / "store"), "--out", str(tmp_path / "best"),
                "--candidates", "2", "--calibrate-windows", "16"] + SMALL)
    printed = capsys.readouterr().out
    assert "reward head (seed 1)" in printed and "reward head (seed 2)" in printed and "kept the head" in printed
    training = Simulator.from_pretrained(out).config.training
    assert "best of 2 seeds" in training["reward_head_data"] and "precision" in training["reward_head_calibration"]


@pytest.mark.parametrize("flags, message", [(["--dream-share", "1"], "--dream-share"),
                                            (["--dream-windows", "0"], "--dream-windows"),
                                            (["--keep-below", "1.5"], "--keep-below"),
                                            (["--candidates", "2"], "--calibrate-windows"),
                                            (["--calibrate-windows", "-1"], "--calibrate-windows"),
                                            (["--memory-frames", "0"], "--memory-frames"),
                                            (["--memory-frames", "9"], "exceeds the simulator's"),
                                            (["--patch-size", "12"], "patch_size must be a power of two"),
                                            (["--patch-size", "128"], "must be divisible by patch_size"),
                                            (["--patch-size", "16", "--no-train"], "--no-train"),
                                            (["--depth", "1", "--no-train"], "--no-train")])
def test_bad_flags_stop_before_writing(folders, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--simulator", str(folders / "sim"), "--data", str(folders / "store"), "--out", str(tmp_path / "new")]
             + SMALL + flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_no_train_alone_writes_the_games_reward_rules_into_the_existing_head(folders, tmp_path, capsys):
    """Data in which every reward ends its episode (as in CoinRun) turns the rule on; the weights stay."""
    store = TrajectoryStore(tmp_path / "goal", create=True)
    rng = np.random.default_rng(0)
    for length in (30, 25, 40, 35, 28, 33, 31, 27, 36, 29, 34):
        rewards = np.zeros(length, np.float32)
        rewards[-1] = 10.0 * (length % 2)  # half the episodes end on the goal, the others without a reward
        store.add_episode(rng.integers(0, 256, (length + 1, 64, 64, 3), dtype=np.uint8),
                          rng.integers(0, 4, length), rewards, np.eye(1, length, length - 1, dtype=bool)[0],
                          np.zeros(length, bool), env_id="ALE/Breakout-v5", action_meanings=BREAKOUT)
    out = main(["--simulator", str(folders / "sim"), "--data", str(tmp_path / "goal"), "--out", str(tmp_path / "new"),
                "--no-train"] + SMALL)
    assert "a dreamed reward ends the dream too" in capsys.readouterr().out
    before, after = Simulator.from_pretrained(folders / "sim"), Simulator.from_pretrained(out)
    assert not before.reward_head.config.reward_ends_episode and after.reward_head.config.reward_ends_episode
    assert after.reward_head.config.sign_values == (-1.0, 0.0, 10.0)
    for a, b in zip(before.reward_head.state_dict().values(), after.reward_head.state_dict().values()):
        assert torch.equal(a, b)


def test_a_store_of_another_game_is_named(folders, tmp_path):
    other = TrajectoryStore(tmp_path / "other", create=True)
    other.add_episode(np.zeros((6, 64, 64, 3), np.uint8), np.zeros(5, np.int64), np.zeros(5, np.float32),
                      np.zeros(5, bool), np.zeros(5, bool), env_id="ALE/Pong-v5", action_meanings=BREAKOUT)
    with pytest.raises(SystemExit, match="holds no ALE/Breakout-v5 episodes"):
        main(["--simulator", str(folders / "sim"), "--data", str(tmp_path / "other"), "--out", str(tmp_path / "new")]
             + SMALL)
    assert not (tmp_path / "new").exists()
