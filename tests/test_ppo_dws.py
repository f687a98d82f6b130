"""ppo_dws.py: autoreset masking, GAE, start windows (dws_gym.rl), and end-to-end runs on real Breakout."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dws_gym.agents import load_policy
from dws_gym.envs.real import make_real_env
from dws_gym.rl import (
    StartWindowRecorder,
    WindowFrameStack,
    gae,
    minibatch_plan,
    ppo_losses,
    real_start_priorities,
    stack_from_windows,
    start_priorities,
    valid_steps,
)
from dws_gym.training import load_checkpoint
from tiny_sim import make_tiny_sim

SCRIPT = Path(__file__).resolve().parent.parent / "ppo_dws.py"
G, L = 0.9, 0.8


def col(*xs, dtype=torch.float32):
    """A (T, 1) tensor."""
    return torch.tensor(xs, dtype=dtype)[:, None]


# ------------------------------------------------------------------------------------------------ masking and GAE


def test_valid_steps_masks_the_step_after_every_end():
    dones = torch.tensor([[0, 1], [1, 0], [0, 0], [0, 1]], dtype=torch.bool)
    valid = valid_steps(dones, torch.tensor([True, False]))
    np.testing.assert_array_equal(valid.numpy(), [[0, 1], [1, 0], [0, 1], [1, 1]])
    assert valid_steps(dones, torch.tensor([True, False]), next_step=False).all()  # SAME_STEP: all valid


def test_gae_masks_next_step_reset_steps():
    # t=1 ends the episode, t=2 is the NEXT_STEP reset step (action ignored, reward 0, obs = next first frame)
    r = col(1.0, 2.0, 0.0, 0.5)
    v = col(0.3, 0.6, 0.7, 0.2)  # v[2] is V(final observation of the first episode)
    last = torch.tensor([0.4])
    no = col(0, 0, 0, 0, dtype=torch.bool)
    done = col(0, 1, 0, 0, dtype=torch.bool)
    valid = valid_steps(done, torch.tensor([False]))
    np.testing.assert_array_equal(valid[:, 0].numpy(), [1, 1, 0, 1])

    adv, ret, delta = gae(r, v, last, done, no, valid, gamma=G, lam=L)  # terminated at t=1
    d3 = 0.5 + G * 0.4 - 0.2
    d1 = 2.0 - 0.6  # terminal: no bootstrap
    d0 = 1.0 + G * 0.6 - 0.3
    np.testing.assert_allclose(adv[:, 0].numpy(), [d0 + G * L * d1, d1, 0.0, d3], rtol=1e-5)
    np.testing.assert_allclose(delta[:, 0].numpy(), [d0, d1, 0.0, d3], rtol=1e-5)
    np.testing.assert_allclose(ret.numpy(), (adv + v).numpy())
    # whatever the reset step holds (reward, value) does not reach the other steps
    r2 = r.clone()
    r2[2] = 100.0
    v2 = v.clone()
    v2[2] = -50.0
    adv2, _, _ = gae(r2, v2, last, done, no, valid, gamma=G, lam=L)
    np.testing.assert_allclose(adv2.numpy(), adv.numpy(), rtol=1e-5)

    # truncated at t=1: bootstrap from the final observation (obs[2] under NEXT_STEP), chain still cut
    adv_t, _, _ = gae(r, v, last, no, done, valid, gamma=G, lam=L)
    d1t = 2.0 + G * 0.7 - 0.6
    np.testing.assert_allclose(adv_t[:, 0].numpy(), [d0 + G * L * d1t, d1t, 0.0, d3], rtol=1e-5)

    # SAME_STEP: obs[2] is already the next episode's first frame, so every end is terminal
    all_valid = torch.ones_like(valid)
    adv_s, _, _ = gae(r, v, last, no, done, all_valid, gamma=G, lam=L, same_step=True)
    d2 = 0.0 + G * 0.2 - 0.7
    np.testing.assert_allclose(adv_s[:, 0].numpy(), [d0 + G * L * d1, d1, d2 + G * L * d3, d3], rtol=1e-5)


def test_an_imagined_rollout_cut_at_the_horizon_bootstraps_from_v_h():
    r = col(0.0, 1.0, 0.0)
    v = col(0.5, 0.4, 0.3)
    v_h = torch.tensor([0.8])
    no = col(0, 0, 0, dtype=torch.bool)
    valid = torch.ones(3, 1, dtype=torch.bool)
    adv, _, delta = gae(r, v, v_h, no, no, valid, gamma=G, lam=L)  # the cut: neither flag set
    d = [0.0 + G * 0.4 - 0.5, 1.0 + G * 0.3 - 0.4, 0.0 + G * 0.8 - 0.3]
    np.testing.assert_allclose(delta[:, 0].numpy(), d, rtol=1e-5)
    np.testing.assert_allclose(adv[2, 0].item(), d[2], rtol=1e-5)
    np.testing.assert_allclose(adv[0, 0].item(), d[0] + G * L * (d[1] + G * L * d[2]), rtol=1e-5)
    # had the dream terminated at the last step, V(s_H) would not count
    term = col(0, 0, 1, dtype=torch.bool)
    adv_term, _, _ = gae(r, v, v_h, term, no, valid, gamma=G, lam=L)
    assert adv_term[2, 0].item() == pytest.approx(-0.3)


def test_ppo_losses_ignore_masked_steps():
    torch.manual_seed(0)
    b = 6
    new_lp, old_lp = torch.randn(b, requires_grad=True), torch.randn(b)
    ent, newv = torch.rand(b), torch.randn(b, 1, requires_grad=True)
    adv, ret, val = torch.randn(b), torch.randn(b), torch.randn(b)
    valid = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.float32)
    kw = dict(clip_coef=0.1)
    out = ppo_losses(new_lp, ent, newv, old_lp, adv, ret, val, valid, **kw)
    # garbage (even inf / nan) in the masked steps changes nothing
    adv2, ret2, old2 = adv.clone(), ret.clone(), old_lp.clone()
    adv2[[2, 4]] = torch.tensor([1e6, float("nan")])
    ret2[[2, 4]] = float("inf")
    old2[[2, 4]] = -1e3
    out2 = ppo_losses(new_lp, ent, newv, old2, adv2, ret2, val, valid, **kw)
    for key in out:
        assert torch.allclose(out[key], out2[key]), key
    out2["pg_loss"].add(out2["v_loss"]).backward()
    assert torch.isfinite(new_lp.grad).all() and new_lp.grad[[2, 4]].abs().sum() == 0
    # with everything valid and weights 1 it is CleanRL's unmasked loss
    ones = torch.ones(b)
    full = ppo_losses(new_lp, ent, newv, old_lp, adv, ret, val, ones, ones, **kw)
    a = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = (new_lp - old_lp).exp()
    pg = torch.max(-a * ratio, -a * ratio.clamp(0.9, 1.1)).mean()
    assert full["pg_loss"].item() == pytest.approx(pg.item(), rel=1e-5)
    # importance weights scale the policy and value terms
    half = ppo_losses(new_lp, ent, newv, old_lp, adv, ret, val, ones, 0.5 * ones, **kw)
    assert half["pg_loss"].item() == pytest.approx(0.5 * pg.item(), rel=1e-5)
    assert half["entropy_loss"].item() == pytest.approx(full["entropy_loss"].item())


def test_start_priorities_average_abs_td_per_start_window():
    deltas = torch.tensor([[0.5, -1.0], [-0.5, 2.0], [9.0, 3.0], [1.0, -4.0]])
    valid = torch.tensor([[1, 1], [1, 1], [0, 1], [1, 1]], dtype=torch.bool)
    starts = np.array([[7, 3], [7, 3], [7, 3], [8, -1]])  # env 0 restarted from window 8 at t=3
    ids, values = start_priorities(deltas, valid, starts)
    np.testing.assert_array_equal(ids, [3, 7, 8])
    np.testing.assert_allclose(values, [(1 + 2 + 3) / 3, 0.5, 1.0])


def test_new_windows_start_at_the_real_td_error_of_their_last_frame():
    """A window recorded after step s ends at the frame step s + 1 acts on: its first priority is |delta[s + 1]|;
    one from the last step, or whose next step is masked, takes the rollout's mean |delta|. In the buffer these
    priorities, not the insertion one, then decide the draws."""
    from dws_gym.imagination import PrioritizedStartStates

    deltas = torch.tensor([[0.5, -1.0, 0.0], [-2.0, 3.0, 0.0], [4.0, 0.0, 1.0]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    mean = (0.5 + 1 + 0 + 2 + 3 + 0 + 4 + 1) / 8
    emitted = [(0, np.array([0, 1]), np.array([10, 11])), (1, np.array([0, 1]), np.array([12, 13])),
               (2, np.array([2]), np.array([14]))]
    ids, values = real_start_priorities(deltas, valid, emitted)
    np.testing.assert_array_equal(ids, [10, 11, 12, 13, 14])
    np.testing.assert_allclose(values, [2.0, 3.0, 4.0, mean, mean])
    assert len(real_start_priorities(deltas, valid, [])[0]) == 0

    buf = PrioritizedStartStates(8, alpha=1.0, eps=1e-3)
    frames = np.zeros((4, 3, 2, 2, 3), np.uint8)
    new = buf.add(frames, np.zeros((4, 2), np.int64))
    np.testing.assert_allclose(buf.probabilities(new), 0.25)  # all at the insertion priority
    buf.update_priorities(*real_start_priorities(torch.tensor([[0.0, 0.0], [0.1, 3.0]]), torch.ones(2, 2).bool(),
                                                 [(0, np.array([0, 1]), new[:2])]))
    p = buf.probabilities(new[:2])
    assert p[1] > 10 * p[0]  # the window with the larger real TD error is drawn far more often


def test_start_window_recorder_names_the_envs_of_its_windows():
    rec = StartWindowRecorder(3, 2, (1, 1, 1))
    f = lambda *x: np.array(x, dtype=np.uint8).reshape(-1, 1, 1, 1)  # noqa: E731
    rec.reset(f(1, 2, 3))
    frames, _ = rec.step([0, 0, 0], f(4, 5, 6), np.array([False, True, False]), np.array([False, False, True]))
    np.testing.assert_array_equal(np.flatnonzero(rec.emitted), [0])  # env 1 restarted, env 2 ended
    np.testing.assert_array_equal(frames.reshape(-1), [1, 4])


def test_minibatch_plan_covers_the_real_batch_and_mixes_imagined_at_the_ratio():
    rng = np.random.RandomState(0)
    plan = minibatch_plan(64, 24, 0.5, 4, rng)
    assert len(plan) == 4
    np.testing.assert_array_equal(np.sort(np.concatenate([p[0] for p in plan])), np.arange(64))
    imag = np.concatenate([p[1] for p in plan])
    assert len(imag) == 32 and set(imag) == set(range(24)) and all(len(p[1]) == 8 for p in plan)
    assert all(len(p[1]) == 0 for p in minibatch_plan(64, 0, 0.5, 4, rng))  # no dreams: plain PPO


# ------------------------------------------------------------------------------------------------ start windows


def test_start_window_recorder_follows_next_step_episodes():
    rec = StartWindowRecorder(1, 3, (1, 1, 1))
    f = lambda x: np.full((1, 1, 1, 1), x, dtype=np.uint8)  # noqa: E731
    no, yes = np.array([False]), np.array([True])
    rec.reset(f(10))
    assert len(rec.step([1], f(11), no, no)[0]) == 0  # 2 frames: not yet a window
    frames, actions = rec.step([2], f(12), no, no)
    np.testing.assert_array_equal(frames.reshape(-1), [10, 11, 12])
    np.testing.assert_array_equal(actions, [[1, 2]])
    assert len(rec.step([3], f(13), no, yes)[0]) == 0  # the final frame of an episode: no window
    assert len(rec.step([0], f(20), yes, no)[0]) == 0  # reset step: a new history starts at 20
    rec.step([1], f(21), no, no)
    frames, actions = rec.step([3], f(22), no, no)
    np.testing.assert_array_equal(frames.reshape(-1), [20, 21, 22])
    np.testing.assert_array_equal(actions, [[1, 3]])


def test_dream_stacks_start_from_the_window_frames():
    w = np.arange(2 * 3).reshape(2, 3, 1, 1, 1).astype(np.uint8)  # 2 windows of 3 frames
    np.testing.assert_array_equal(stack_from_windows(w, 2).reshape(2, 2), [[1, 2], [4, 5]])
    np.testing.assert_array_equal(stack_from_windows(w, 4).reshape(2, 4), [[0, 0, 1, 2], [3, 3, 4, 5]])
    stacker = WindowFrameStack(2, lambda ids: (w[ids], None))
    np.testing.assert_array_equal(stacker.reset(np.array([0, 1])).reshape(2, 2), [[1, 2], [4, 5]])
    frames = np.array([9, 8], dtype=np.uint8).reshape(2, 1, 1, 1)
    out = stacker.step(frames, np.array([False, True]), np.array([-1, 0]))
    np.testing.assert_array_equal(out.reshape(2, 2), [[2, 9], [1, 2]])


# ------------------------------------------------------------------------------------------------ the script


@pytest.fixture(scope="module")
def tiny_simulator(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "tiny"
    make_tiny_sim(0).save_pretrained(path)
    return path


def _cmd(out: Path, sim: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--env-id", "ALE/Breakout-v5", "--num-envs", "2", "--num-steps", "32",
            "--num-dream-envs", "2", "--horizon", "4", "--simulator", str(sim), "--output-dir", str(out),
            "--no-cuda", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _scalars(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _script_module():
    """ppo_dws.py imported as a module (its run sits under ``if __name__ == "__main__"``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ppo_dws_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_life_loss_ends_real_targets_only_when_nothing_is_dreamed():
    ppo = _script_module()
    for env_id, imagination, argv, expected in [
        ("ALE/Breakout-v5", "none", [], True),  # CleanRL's EpisodicLifeEnv
        ("ALE/Breakout-v5", "none", ["--no-episodic-life"], False),
        ("ALE/Breakout-v5", "prioritized", [], False),  # dreams predict no lost life: off for both halves
        ("ALE/Breakout-v5", "uniform", ["--no-episodic-life"], False),
        ("procgen/coinrun", "none", [], False),  # no lives
    ]:
        args = ppo.Args(env_id=env_id, imagination=imagination, episodic_life="--no-episodic-life" not in argv)
        ppo.fill_defaults(args, argv)
        assert args.episodic_life is expected, (env_id, imagination, argv)
    for flag in ("--episodic-life", "--episodic_life"):
        with pytest.raises(SystemExit, match="--episodic-life needs --imagination none"):
            ppo.fill_defaults(ppo.Args(env_id="ALE/Breakout-v5", imagination="uniform"), [flag])
    assert "episodic_life" in ppo.RESUME_FIELDS  # a resumed run keeps its value targets


def test_an_evaluation_period_below_one_step_is_refused_with_the_way_to_skip_evaluations():
    ppo = _script_module()
    for every in (0, -5):
        with pytest.raises(SystemExit, match=f"--eval-every must be >= 1 real steps, got {every}.*--eval-episodes 0"):
            ppo.fill_defaults(ppo.Args(env_id="ALE/Breakout-v5", eval_every=every))


@pytest.mark.parametrize("mode", ["prioritized", "uniform", "none"])
def test_smoke_runs_every_imagination_mode(tmp_path, tiny_simulator, mode):
    out = tmp_path / "run"
    evaluate = ["--eval-episodes", "1", "--eval-max-steps", "40"] if mode == "prioritized" else ["--eval-episodes", "0"]
    proc = subprocess.run(_cmd(out, tiny_simulator, "--total-timesteps", "128", "--imagination", mode, *evaluate),
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    policy = load_policy(out / "policy", env=make_real_env("ALE/Breakout-v5", 1, frame_stack=4))
    assert policy.config.extra["global_step"] == 128
    state = load_checkpoint(out / "checkpoint")
    assert state["global_step"] == 128 and state["iteration"] == 2
    scalars = _scalars(out)
    for tag in ("charts/SPS", "charts/real_reward_mean", "losses/policy_loss", "losses/value_loss", "losses/entropy",
                "losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "charts/learning_rate"):
        assert len(scalars[tag]) == 2, tag
    if mode == "none":
        assert "charts/imagined_reward_mean" not in scalars and state["buffer"] is None
    else:
        assert len(scalars["charts/imagined_reward_mean"]) == 2
        assert state["buffer"]["next_id"] > 0 and state["buffer"]["alpha"] == (0.6 if mode == "prioritized" else 0.0)
        assert scalars["charts/beta"][-1] == pytest.approx(1.0)  # annealed to 1 by the end of the run
    if mode == "prioritized":
        assert len(scalars["eval/episodic_return"]) == 1 and len(scalars["eval/episodic_length"]) == 1
        # TD priorities reached the buffer: not every window still holds the initial priority
        assert not np.allclose(state["buffer"]["priorities"].numpy(), 1.0)


def test_resume_after_a_kill_continues_at_the_saved_step(tmp_path, tiny_simulator):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, tiny_simulator, "--total-timesteps", "100000", "--checkpoint-minutes", "0",
                                 "--eval-episodes", "0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    ckpt = out / "checkpoint" / "training_state.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stderr.read().decode()[-3000:]
    saved = load_checkpoint(out / "checkpoint")
    step, next_id = saved["global_step"], saved["buffer"]["next_id"]
    assert step > 0 and step % 64 == 0

    proc = subprocess.run(_cmd(out, tiny_simulator, "--total-timesteps", str(step + 64), "--eval-episodes", "0",
                               "--resume"), capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed {out} at global_step={step}" in proc.stdout
    final = load_checkpoint(out / "checkpoint")
    assert final["global_step"] == step + 64 and final["iteration"] == saved["iteration"] + 1
    assert final["run_name"] == saved["run_name"]
    assert final["buffer"]["next_id"] > next_id  # the buffer went on from its saved ids
    opt_step = lambda s: int(next(iter(s["optimizer"]["state"].values()))["step"])  # noqa: E731
    assert opt_step(final) == opt_step(saved) + 4 * 4  # 4 epochs x 4 minibatches more on the restored optimizer
    assert load_policy(out / "policy").config.extra["global_step"] == step + 64

    # a resume with other settings is refused
    bad = subprocess.run(_cmd(out, tiny_simulator, "--total-timesteps", "1000", "--horizon", "5", "--resume"),
                         capture_output=True, text=True, timeout=300, env=_env())
    assert bad.returncode != 0 and "horizon" in bad.stderr


def test_a_resumed_norm_reward_run_keeps_its_reward_statistics(tmp_path, tiny_simulator):
    """The reward scaler's running statistics are saved with the run and go on after --resume (its running discounted
    returns restart at 0 there, since the real envs start new episodes: not observable from outside, not tested)."""
    out = tmp_path / "run"
    common = ("--imagination", "none", "--norm-reward", "True", "--eval-episodes", "0", "--num-minibatches", "2",
              "--update-epochs", "1")
    first = subprocess.run(_cmd(out, tiny_simulator, "--total-timesteps", "64", *common),
                           capture_output=True, text=True, timeout=300, env=_env())
    assert first.returncode == 0, first.stderr[-3000:]
    saved = load_checkpoint(out / "checkpoint")["scaler"]
    assert saved["count"] > 1 and saved["var"] != 1.0  # updated from its initial (1e-4, 1.0)
    second = subprocess.run(_cmd(out, tiny_simulator, "--total-timesteps", "128", "--resume", *common),
                            capture_output=True, text=True, timeout=300, env=_env())
    assert second.returncode == 0, second.stderr[-3000:]
    final = load_checkpoint(out / "checkpoint")["scaler"]
    assert 0 < final["count"] - saved["count"] <= 64  # from the saved count, by at most one iteration's env-steps


def test_max_minutes_stops_after_an_iteration_with_an_evaluation_and_a_checkpoint(tmp_path, tiny_simulator):
    out = tmp_path / "run"
    proc = subprocess.run(_cmd(out, tiny_simulator, "--total-timesteps", "100000", "--imagination", "none",
                               "--max-minutes", "0", "--eval-episodes", "1", "--eval-max-steps", "10"),
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--max-minutes 0.0 reached at global_step=64; --resume continues" in proc.stdout
    state = load_checkpoint(out / "checkpoint")
    assert state["global_step"] == 64 and state["iteration"] == 1
    assert len(_scalars(out)["eval/episodic_return"]) == 1


def test_a_procgen_behaviour_policy_records_its_levels_and_returns_and_its_dataset_names_them(tmp_path):
    """The behaviour-policy path of the offline datasets: plain PPO on Procgen training levels, a final evaluation on
    train levels 0-199 and unseen levels >= 250 stored with the policy, and a collection that records all of it."""
    import json

    from dws_gym.collect import CollectArgs, collect
    from dws_gym.data import TrajectoryStore

    out = tmp_path / "coinrun"
    cmd = [sys.executable, str(SCRIPT), "--env-id", "procgen/coinrun", "--num-envs", "2", "--num-steps", "16",
           "--num-minibatches", "2", "--update-epochs", "1", "--total-timesteps", "32", "--imagination", "none",
           "--procgen-num-levels", "200", "--eval-episodes", "0", "--final-eval-episodes", "2",
           "--eval-max-steps", "20", "--output-dir", str(out), "--no-cuda"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PPO, 32 steps: mean return" in proc.stdout and "on levels >= 250 (2 episodes)" in proc.stdout
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["global_step"] == 32 and set(saved["ranges"]) == {"train", "test"}
    assert all(r["episodes"] == 2 and r["length"] <= 20 for r in saved["ranges"].values())
    assert saved["test_levels_unseen"] is True and saved["range_levels"]["test"]["start_level"] == 250
    extra = load_policy(out / "policy").config.extra
    assert extra["evaluation"] == saved and extra["algorithm"] == "ppo_dws" and extra["imagination"] == "none"
    assert extra["levels"] == {"start_level": 0, "num_levels": 200, "distribution_mode": "easy"}

    collect(CollectArgs(env_id="procgen/coinrun", steps=40, out=str(tmp_path / "data"), num_envs=2,
                        policy=str(out / "policy"), num_levels=200, progress=False))
    store = TrajectoryStore(tmp_path / "data")
    meta = store.meta(store.episode_ids()[0])
    assert meta.policy == "policy:policy"
    behaviour = meta.extra["behaviour_policy"]
    assert behaviour["path"] == str(out / "policy") and behaviour["global_step"] == 32
    assert behaviour["evaluation"] == saved and behaviour["levels"]["num_levels"] == 200
    assert meta.extra["levels"] == {"start_level": 0, "num_levels": 200, "distribution_mode": "easy"}
    assert meta.extra["deterministic"] is False


def test_resuming_a_run_that_ended_real_targets_at_lost_lives_while_dreaming_is_refused(tmp_path, tiny_simulator):
    """A run from before lost lives and imagination were kept apart cannot continue under the new rule."""
    from dws_gym.training import save_checkpoint

    out = tmp_path / "run"
    first = subprocess.run(_cmd(out, tiny_simulator, "--total-timesteps", "64", "--imagination", "uniform",
                                "--eval-episodes", "0"), capture_output=True, text=True, timeout=300, env=_env())
    assert first.returncode == 0, first.stderr[-3000:]
    state = load_checkpoint(out / "checkpoint")
    assert state["args"]["episodic_life"] is False  # imagination turned it off
    state["args"]["episodic_life"] = True  # as every run saved it before
    save_checkpoint(out / "checkpoint", state)
    again = subprocess.run(_cmd(out, tiny_simulator, "--total-timesteps", "128", "--imagination", "uniform",
                                "--eval-episodes", "0", "--resume"), capture_output=True, text=True, timeout=300,
                           env=_env())
    assert again.returncode != 0 and "start a new run" in again.stderr
