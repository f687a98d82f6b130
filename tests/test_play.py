"""dws_gym.play: headless real-vs-dream recording, the key -> action mapping, and the CLI's errors."""

import os
import re
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dws_gym.agents import ActorCritic, PolicyConfig, save_policy
from dws_gym.envs import registration
from dws_gym.models.actions import PROCGEN_COMBOS
from dws_gym.play import (
    SEPARATOR_WIDTH,
    PlayArgs,
    action_components,
    keys_to_action,
    main,
    play_headless,
    side_by_side,
)
from dws_gym.simulator import Simulator
from tiny_sim import make_tiny_sim

K = 3
BREAKOUT = ["NOOP", "FIRE", "RIGHT", "LEFT"]
PROCGEN = ["+".join(c) if c else "NOOP" for c in PROCGEN_COMBOS]
E, T, SCALE = 2, 3, 2


def tiny_breakout_sim(seed: int = 0) -> Simulator:
    return make_tiny_sim(seed, context=K)


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    return str(tiny_breakout_sim().save_pretrained(tmp_path_factory.mktemp("sim") / "breakout", card=False))


def headless_args(sim_dir, out, **kw) -> PlayArgs:
    base = dict(env_id="dws/Breakout-v0", simulator=sim_dir, headless=True, episodes=E, max_steps=T, out=str(out),
                seed=0, scale=SCALE, device="cpu")
    base.update(kw)
    return PlayArgs(**base)


# ------------------------------------------------------------------------------------------- headless
def test_headless_writes_side_by_side_gif(sim_dir, tmp_path):
    result = play_headless(headless_args(sim_dir, tmp_path / "a.gif"))
    assert result.path == tmp_path / "a.gif" and result.path.is_file()
    for arr in (result.real_returns, result.dream_returns, result.real_end_steps, result.dream_end_steps):
        assert arr.shape == (E,)
    assert result.actions.shape == (E, T) and result.actions.min() >= 0 and result.actions.max() < 4
    assert np.all((result.real_end_steps == -1) | ((result.real_end_steps >= 1) & (result.real_end_steps <= T)))

    frames = iio.imread(result.path, index=None)
    assert frames.shape[:3] == (T + 1, 64 * SCALE, 2 * 64 * SCALE + SEPARATOR_WIDTH)
    first = frames[0, :, :, :3]
    # At t = 0 the dream IS the real reset frame, so both halves of the first frame agree.
    left, right = first[:, : 64 * SCALE], first[:, 64 * SCALE + SEPARATOR_WIDTH:]
    assert np.array_equal(left, right)
    # The dream then departs from it (a random tiny simulator cannot follow the real game).
    last = frames[-1, :, :, :3]
    assert not np.array_equal(last[:, : 64 * SCALE], last[:, 64 * SCALE + SEPARATOR_WIDTH:])


def test_headless_same_seed_same_output(sim_dir, tmp_path):
    a = play_headless(headless_args(sim_dir, tmp_path / "a.gif", episodes=1, max_steps=2))
    b = play_headless(headless_args(sim_dir, tmp_path / "b.gif", episodes=1, max_steps=2))
    c = play_headless(headless_args(sim_dir, tmp_path / "c.gif", episodes=1, max_steps=2, seed=5))
    assert a.path.read_bytes() == b.path.read_bytes()
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.real_returns, b.real_returns)
    np.testing.assert_array_equal(a.dream_returns, b.dream_returns)
    assert a.path.read_bytes() != c.path.read_bytes()


def test_headless_with_policy_checkpoint(sim_dir, tmp_path):
    torch.manual_seed(0)
    policy = ActorCritic(PolicyConfig(arch="nature", obs_shape=(2, 64, 64, 3), num_actions=4, frame_stack=2,
                                      env_id="ALE/Breakout-v5", action_meanings=BREAKOUT))
    save_policy(policy, tmp_path / "policy")
    args = headless_args(sim_dir, tmp_path / "p.gif", episodes=1, max_steps=2, policy=str(tmp_path / "policy"),
                         deterministic=True)
    result = play_headless(args)
    # Deterministic argmax of a fixed network on the same frames: a repeat takes the same actions.
    assert result.actions.shape == (1, 2)
    np.testing.assert_array_equal(play_headless(args).actions, result.actions)


def _one_action_policy(folder, action: int, logit: float) -> str:
    """A saved checkpoint whose actor ignores the frames: logit ``logit`` for ``action``, 0 for the others."""
    policy = ActorCritic(PolicyConfig(arch="nature", obs_shape=(64, 64, 3), num_actions=4, frame_stack=1,
                                      env_id="ALE/Breakout-v5", action_meanings=BREAKOUT))
    with torch.no_grad():
        policy.actor.weight.zero_()
        policy.actor.bias.zero_()
        policy.actor.bias[action] = logit
    save_policy(policy, folder)
    return str(folder)


@pytest.mark.parametrize("action, deterministic", [(2, True), (3, False)])
def test_headless_plays_the_checkpoints_actions(sim_dir, tmp_path, action, deterministic):
    """Every step, on both sides, takes the action the checkpoint prefers: argmax, or a draw from p(action) ~ 1."""
    folder = _one_action_policy(tmp_path / "policy", action, logit=50.0)
    result = play_headless(headless_args(sim_dir, tmp_path / "p.gif", episodes=2, max_steps=4, policy=folder,
                                         deterministic=deterministic))
    assert result.actions.shape == (2, 4) and result.actions.dtype == np.int64
    assert (result.actions == action).all(), result.actions
    assert result.extra["policy"] == folder


def test_headless_policy_acts_on_the_real_frames(sim_dir, tmp_path, monkeypatch):
    """The actions played are the ones the policy picks for the real game's frames, step after step.

    The loaded checkpoint acts by a frame-dependent rule (the scripted ball tracker: FIRE, then follow the ball);
    replaying the real game with the played actions shows the policy saw those frames and was obeyed.
    """
    from dws_gym.envs.real import make_real_env
    from dws_gym.scripted import BreakoutTracker

    seen = []

    def tracker_act(self, obs, deterministic=False, generator=None):
        seen.append(np.array(obs, copy=True))
        return BreakoutTracker(eps=0.0).act(obs)

    monkeypatch.setattr(ActorCritic, "act", tracker_act)
    folder = _one_action_policy(tmp_path / "policy", 0, logit=50.0)  # the network alone would always play NOOP
    steps = 12
    result = play_headless(headless_args(sim_dir, tmp_path / "p.gif", episodes=2, max_steps=steps, policy=folder,
                                         deterministic=True, seed=4))
    assert len(seen) == steps and result.actions.shape == (2, steps)
    assert len(np.unique(result.actions)) > 1  # a frame-dependent choice, not one action throughout

    real = make_real_env("ALE/Breakout-v5", num_envs=2)
    try:
        obs, _ = real.reset(seed=4)
        for t in range(steps):
            np.testing.assert_array_equal(seen[t], obs, err_msg=f"step {t}: the policy saw other frames")
            np.testing.assert_array_equal(result.actions[:, t], BreakoutTracker(eps=0.0).act(obs))
            obs, *_ = real.step(result.actions[:, t])
    finally:
        real.close()


def test_cli_prints_table_and_summary(sim_dir, tmp_path, capsys):
    out = tmp_path / "cli.gif"
    result = main(["dws/Breakout-v0", "--simulator", sim_dir, "--headless", "--episodes", "2", "--max-steps", "2",
                   "--scale", "1", "--out", str(out), "--device", "cpu"])
    text = capsys.readouterr().out
    assert result is not None and out.is_file()
    assert "real return" in text and "dream return" in text and "mean ± std" in text and str(out) in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0 ", "1 "))]) == 2


def test_mp4_output_works_or_says_what_to_install(sim_dir, tmp_path):
    out = tmp_path / "a.mp4"
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        has_ffmpeg = True
    except Exception:
        has_ffmpeg = False
    if has_ffmpeg:
        result = play_headless(headless_args(sim_dir, out, episodes=1, max_steps=2))
        reader = imageio_ffmpeg.read_frames(str(result.path))
        meta = next(reader)
        assert tuple(meta["size"]) == (2 * 64 * SCALE + SEPARATOR_WIDTH, 64 * SCALE)
        assert sum(1 for _ in reader) == 3  # T + 1 frames
    else:
        with pytest.raises(ImportError, match=r"dws-gym\[video\]"):
            play_headless(headless_args(sim_dir, out, episodes=1, max_steps=2))
        assert not out.exists()


def test_bad_output_suffix_and_sizes(sim_dir, tmp_path):
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        play_headless(headless_args(sim_dir, tmp_path / "a.avi"))
    with pytest.raises(ValueError, match="max-steps"):
        play_headless(headless_args(sim_dir, tmp_path / "a.gif", max_steps=0))


def test_side_by_side_layout():
    real = np.zeros((64, 64, 3), np.uint8)
    dream = np.full((64, 64, 3), 200, np.uint8)
    frame = side_by_side(real, dream, scale=3, progress=0.5)
    assert frame.shape == (192, 2 * 192 + SEPARATOR_WIDTH, 3) and frame.dtype == np.uint8
    assert (frame[:, :192] == 0).all() and (frame[:, 192 + SEPARATOR_WIDTH:] == 200).all()
    sep = frame[:, 192:192 + SEPARATOR_WIDTH, 0]
    assert (sep[:96] == 255).all() and (sep[96:] < 255).all()  # the time bar is half full


# ------------------------------------------------------------------------------------------- keys -> action
def test_keys_to_action_breakout():
    assert keys_to_action(set(), BREAKOUT) == 0
    assert keys_to_action({"space"}, BREAKOUT) == 1
    assert keys_to_action({"right"}, BREAKOUT) == 2
    assert keys_to_action({"left"}, BREAKOUT) == 3
    assert keys_to_action({"up", "space"}, BREAKOUT) == 1  # no UPFIRE in the minimal set: the FIRE part
    assert keys_to_action({"left", "right"}, BREAKOUT) == 0  # opposite arrows cancel
    assert keys_to_action({"Left", "x"}, BREAKOUT) == 3  # case-insensitive, unmapped keys ignored


def test_keys_to_action_full_ale_set():
    from dws_gym.models.actions import ALE_ACTION_MEANINGS

    full = list(ALE_ACTION_MEANINGS)
    assert full[keys_to_action({"up", "left", "space"}, full)] == "UPLEFTFIRE"
    assert full[keys_to_action({"down", "right"}, full)] == "DOWNRIGHT"
    assert full[keys_to_action({"down", "space"}, full)] == "DOWNFIRE"


def test_keys_to_action_procgen():
    assert PROCGEN[keys_to_action(set(), PROCGEN)] == "NOOP"
    assert PROCGEN[keys_to_action({"left", "up"}, PROCGEN)] == "LEFT+UP"
    assert PROCGEN[keys_to_action({"right", "down"}, PROCGEN)] == "RIGHT+DOWN"
    assert PROCGEN[keys_to_action({"right"}, PROCGEN)] == "RIGHT"
    assert PROCGEN[keys_to_action({"d"}, PROCGEN)] == "D"
    # Tuple meanings (as PROCGEN_COMBOS) map the same way as their "+"-joined names.
    assert keys_to_action({"left", "up"}, list(PROCGEN_COMBOS)) == keys_to_action({"left", "up"}, PROCGEN)


def test_action_components_rejects_unknown_meanings():
    assert action_components("UPRIGHTFIRE") == {"UP", "RIGHT", "FIRE"}
    assert action_components("NOOP") == frozenset()
    with pytest.raises(ValueError, match="Unknown action meaning"):
        action_components("JUMP")


# ------------------------------------------------------------------------------------------- CLI errors
def test_cli_missing_shipped_simulator_is_a_clean_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registration, "SIMULATORS_DIR", tmp_path / "none")
    with pytest.raises(SystemExit) as exc:
        main(["dws/Breakout-v0", "--headless", "--out", str(tmp_path / "x.gif")])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "No simulator ships for dws/Breakout-v0" in err and "train_world_model.py" in err
    assert "Traceback" not in err


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dws_gym.play", "dws/Dream-v0", "--headless",
                           "--out", str(tmp_path / "x.gif")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "needs simulator=" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.gif").exists()


# ------------------------------------------------------------------------------------------- window
def test_viewer_runs_with_dummy_video_driver(sim_dir, monkeypatch):
    pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    from dws_gym.envs.dream import DreamVectorEnv
    from dws_gym.play import DreamViewer

    env = DreamVectorEnv(sim_dir, num_envs=1, device="cpu", max_episode_steps=5, env_id="dws/Breakout-v0")
    viewer = DreamViewer(env, scale=2, fps=1000, seed=0)
    try:
        assert viewer.screen.get_size() == (128, 128 + DreamViewer.HUD_HEIGHT)
        before = viewer.frame.copy()
        viewer.step({"space"})
        viewer.draw()
        assert viewer.action == 1 and viewer.steps == 1 and not np.array_equal(before, viewer.frame)
        viewer.run(max_frames=2)  # the loop itself: no keys held -> NOOP steps
        assert viewer.steps == 3 and viewer.action == 0
    finally:
        viewer.close()
        env.close()


def test_logged_replay_dreams_held_out_episodes_under_their_actions(tmp_path, sim_dir, capsys):
    """--data: the dream starts from K logged frames of a held-out episode and follows its logged actions."""
    from dws_gym.collect import CollectArgs, collect
    from dws_gym.data import TrajectoryStore
    from dws_gym.evaluation import held_out_windows
    from dws_gym.play import play_logged

    store_dir = tmp_path / "store"
    collect(CollectArgs(env_id="ALE/Breakout-v5", steps=400, num_envs=2, out=str(store_dir), progress=False))
    args = PlayArgs(env_id="dws/Dream-v0", simulator=sim_dir, headless=True, episodes=2, max_steps=4,
                    out=str(tmp_path / "logged.gif"), data=str(store_dir), seed=3, device="cpu")
    result = play_logged(args)
    clips = held_out_windows(TrajectoryStore(store_dir), "ALE/Breakout-v5", K, 4, 2, 0.1, 3)
    assert np.array_equal(result.actions, clips["actions"][:, K - 1 : K + 3])
    assert np.array_equal(result.real_returns, clips["rewards"][:, K - 1 : K + 3].sum(axis=1))
    assert result.path.is_file() and result.num_frames == 5 and result.dream_returns.shape == (2,)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # a missing store: a clear error and exit code 2, no traceback
        main(["dws/Dream-v0", "--simulator", sim_dir, "--headless", "--data", str(tmp_path / "nowhere"),
              "--out", str(tmp_path / "x.gif")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"error: trajectory store \S*nowhere does not exist", err) and "Traceback" not in err
