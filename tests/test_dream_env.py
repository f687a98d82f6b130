"""The dream env (DreamVectorEnv / DreamEnv) over a tiny real simulator, and the registered dws/* ids."""

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.vector import AutoresetMode

import dws_gym
from dws_gym.envs.dream import DreamEnv, DreamVectorEnv
from dws_gym.envs.frame_stack import FrameStackVector
from dws_gym.envs.registration import DEFAULT_MAX_EPISODE_STEPS, DREAM_GAMES, dream_env_ids, register_dream_envs
from dws_gym.imagination import UniformStartSampler
from dws_gym.simulator import Simulator
from tiny_sim import make_tiny_sim

K = 3
MEANINGS = ["NOOP", "FIRE", "RIGHT", "LEFT"]
STARTS = 6


def tiny_sim(seed: int = 0, term_logit: float | None = None, env_id: str = "ALE/Breakout-v5") -> Simulator:
    """A perturbed tiny simulator; ``term_logit`` fixes the termination probability (0.0 -> 0.5, 20 -> always)."""
    return make_tiny_sim(seed, context=K, num_starts=STARTS, env_id=env_id, term_logit=term_logit)


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """Saved simulator folders: a coin-flip terminator (when sampled), an always- and a never-terminator."""
    root = tmp_path_factory.mktemp("sims")
    return {
        "coin": str(tiny_sim(0, term_logit=0.0).save_pretrained(root / "coin", card=False)),
        "always": str(tiny_sim(1, term_logit=20.0).save_pretrained(root / "always", card=False)),
        "never": str(tiny_sim(2, term_logit=-20.0).save_pretrained(root / "never", card=False)),
    }


def run(env, actions):
    out = []
    for a in actions:
        out.append(env.step(a))
    return out


# ------------------------------------------------------------------------------------------- gymnasium conformance
def test_check_env_on_single_env(sims):
    env = gym.make("dws/Dream-v0", simulator=sims["coin"], render_mode="rgb_array", device="cpu")
    assert isinstance(env.unwrapped, DreamEnv)
    assert env.spec.max_episode_steps == DEFAULT_MAX_EPISODE_STEPS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings (bad spaces, seeding, render) fail the test
        check_env(env.unwrapped, skip_render_check=False)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and isinstance(info["start_id"], int)
    assert np.array_equal(env.render(), obs)
    env.close()


def test_make_and_make_vec_in_lockstep_across_episode_ends(sims):
    kwargs = dict(simulator=sims["coin"], sample_termination=True, max_episode_steps=3, device="cpu")
    env = gym.make("dws/Breakout-v0", **kwargs)
    envs = gym.make_vec("dws/Breakout-v0", num_envs=1, **kwargs)
    assert isinstance(envs.unwrapped, DreamVectorEnv) and envs.unwrapped.max_episode_steps == 3
    obs, info = env.reset(seed=7)
    vobs, vinfo = envs.reset(seed=7)
    assert data_equivalence(obs, vobs[0]) and info["start_id"] == vinfo["start_id"][0]
    env.action_space.seed(0)
    ends = 0
    for _ in range(12):
        action = env.action_space.sample()
        obs, reward, term, trunc, info = env.step(action)
        vobs, vreward, vterm, vtrunc, vinfo = envs.step(np.array([action]))
        assert data_equivalence(obs, vobs[0])
        assert reward == vreward[0] and term == vterm[0] and trunc == vtrunc[0]
        if term or trunc:
            ends += 1
            obs, info = env.reset()
            vobs, vreward, vterm, vtrunc, vinfo = envs.step(envs.action_space.sample())  # NEXT_STEP autoreset
            assert data_equivalence(obs, vobs[0])
            assert vreward[0] == 0 and not vterm[0] and not vtrunc[0]
            assert vinfo["_start_id"][0] and vinfo["start_id"][0] == info["start_id"]
    assert ends >= 2  # the comparison crossed episode ends (terminations and the 3-step truncation)
    env.close()
    envs.close()


def test_gymnasium_wrappers_work(sims, tmp_path):
    from gymnasium.wrappers.vector import RecordEpisodeStatistics, RecordVideo

    envs = RecordEpisodeStatistics(gym.make_vec("dws/Dream-v0", num_envs=2, simulator=sims["never"], device="cpu",
                                                max_episode_steps=2))
    envs.reset(seed=0)
    infos = run(envs, [envs.action_space.sample() for _ in range(2)])
    assert infos[-1][3].all()
    episode = infos[-1][4]["episode"]
    assert episode["l"].tolist() == [2, 2] and infos[-1][4]["_episode"].all()

    single = gym.wrappers.RecordEpisodeStatistics(gym.make("dws/Dream-v0", simulator=sims["always"], device="cpu"))
    single.reset(seed=0)
    *_, info = single.step(0)
    assert info["episode"]["l"] == 1

    video = RecordVideo(
        gym.make_vec("dws/Dream-v0", num_envs=2, simulator=sims["never"], device="cpu", render_mode="rgb_array"),
        str(tmp_path / "videos"), episode_trigger=lambda e: True,
    )
    video.reset(seed=0)
    video.step(np.array([0, 1]))
    assert len(video.recorded_frames) == 2 and video.recorded_frames[0].shape in {(64, 128, 3), (128, 64, 3)}
    # Writing the mp4 is moviepy's business (its ffmpeg backend is not installed here): drop the clip unwritten.
    video.recording, video.recorded_frames = False, []
    video.close()


def test_numpy_to_torch_wrapper(sims):
    pytest.importorskip("array_api_compat", reason="gymnasium's NumpyToTorch needs the gymnasium[array-api] extra")
    from gymnasium.wrappers.vector import NumpyToTorch

    torch_envs = NumpyToTorch(gym.make_vec("dws/Dream-v0", num_envs=2, simulator=sims["never"], device="cpu"))
    obs, _ = torch_envs.reset(seed=0)
    obs, reward, *_ = torch_envs.step(torch.tensor([1, 2]))
    assert torch.is_tensor(obs) and obs.shape == (2, 64, 64, 3) and torch.is_tensor(reward)


def test_same_seed_same_trajectories_and_seed_changes_them(sims):
    def trajectory(seed):
        envs = DreamVectorEnv(sims["coin"], 3, device="cpu", sample_termination=True, max_episode_steps=2)
        obs, info = envs.reset(seed=seed)
        out = [obs, info["start_id"]]
        for a in ([0, 1, 2], [3, 3, 0], [1, 0, 1], [2, 2, 2]):
            obs, reward, term, trunc, info = envs.step(np.array(a))
            out += [obs, reward, term, trunc, info.get("start_id")]
        return out

    a, b, c = trajectory(3), trajectory(3), trajectory(4)
    assert data_equivalence(a, b)
    assert not data_equivalence(a, c)


# ------------------------------------------------------------------------------------------- autoreset modes
def test_next_step_autoreset_restarts_from_the_sampler(sims):
    envs = DreamVectorEnv(sims["always"], 2, device="cpu")
    assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert envs.metadata is not DreamVectorEnv.metadata  # an own dict, not gymnasium's shared one
    obs, info = envs.reset(seed=0)
    sim = envs.simulator
    np.testing.assert_array_equal(obs, sim.start_frames[info["start_id"], -1].numpy())
    obs, reward, term, trunc, info = envs.step(np.array([1, 2]))
    assert term.all() and "start_id" not in info
    obs, reward, term, trunc, info = envs.step(np.array([1, 2]))  # actions ignored: both envs restart
    assert not term.any() and not trunc.any() and (reward == 0).all() and info["_start_id"].all()
    np.testing.assert_array_equal(obs, sim.start_frames[info["start_id"], -1].numpy())


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_rolling_cache_env_matches_the_uncached_env_across_restarts(sims, mode):
    """Episodes end at random (sampled coin-flip terminations), so steps run on subsets of the envs (NEXT_STEP) and
    restarts replace cache rows; the cached env must give what the uncached one gives, step for step."""
    kw = dict(device="cpu", dtype="fp32", autoreset_mode=mode, sample_termination=True, sample_reward=True)
    cached = DreamVectorEnv(sims["coin"], 5, **kw)
    plain = DreamVectorEnv(sims["coin"], 5, rolling_cache=False, **kw)
    assert cached.rolling_cache and not plain.rolling_cache
    for env in (cached, plain):
        env.reset(seed=3)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(30):
        a = rng.integers(0, 4, 5)
        one, two = cached.step(a), plain.step(a)
        for x, y in zip(one[:4], two[:4]):
            np.testing.assert_array_equal(x, y)
        ends += int(one[2].sum())
    assert ends >= 5  # restarts happened along the way
    assert cached._state.head_tokens is not None and plain._state.head_tokens is None


def test_same_step_autoreset_reports_final_obs(sims):
    envs = DreamVectorEnv(sims["always"], 2, device="cpu", autoreset_mode="SameStep")
    envs.reset(seed=0)
    obs, reward, term, trunc, info = envs.step(np.array([0, 3]))
    assert term.all() and info["_final_obs"].all() and info["_start_id"].all()
    assert info["final_info"] == {} and info["_final_info"].all()  # gymnasium's SAME_STEP keys, as SyncVectorEnv
    np.testing.assert_array_equal(obs, envs.simulator.start_frames[info["start_id"], -1].numpy())
    assert info["final_obs"][0].shape == (64, 64, 3)
    assert not all(np.array_equal(info["final_obs"][i], obs[i]) for i in range(2))


def test_disabled_autoreset_and_reset_mask(sims):
    envs = DreamVectorEnv(sims["never"], 3, device="cpu", autoreset_mode=AutoresetMode.DISABLED, max_episode_steps=1)
    with pytest.raises(ValueError, match="first reset"):
        envs.reset(seed=0, options={"reset_mask": np.array([True, False, True])})
    envs.reset(seed=0)
    obs, _, _, trunc, info = envs.step(np.array([0, 1, 2]))
    assert trunc.all() and "start_id" not in info
    mask = np.array([False, True, False])
    new_obs, info = envs.reset(options={"reset_mask": mask})
    assert info["_start_id"].tolist() == [False, True, False] and info["start_id"][[0, 2]].tolist() == [-1, -1]
    np.testing.assert_array_equal(new_obs[[0, 2]], obs[[0, 2]])
    np.testing.assert_array_equal(new_obs[1], envs.simulator.start_frames[info["start_id"][1], -1].numpy())
    _, _, _, trunc, _ = envs.step(np.array([0, 0, 0]))
    assert trunc.all()  # a DISABLED env never restarts by itself: the two unreset ones stay past their cap


def test_start_states_options_and_custom_sampler_priorities(sims):
    class Recording(UniformStartSampler):
        def __init__(self, *a):
            super().__init__(*a)
            self.calls, self.updates = [], []

        def sample(self, n, rng):
            self.calls.append(rng)
            return super().sample(n, rng)

        def update_priorities(self, ids, values):
            self.updates.append((np.asarray(ids).tolist(), np.asarray(values).tolist()))

    sim = tiny_sim(0, term_logit=20.0)
    sampler = Recording(sim.start_frames, sim.start_actions)
    envs = DreamVectorEnv(sim, 2, device="cpu", start_states=sampler)
    _, info = envs.reset(seed=0)
    assert sampler.calls == [envs.np_random]  # the env's rng on every call
    envs.step(np.array([0, 0]))
    _, _, _, _, info2 = envs.step(np.array([0, 0]))  # restarts: a second draw
    assert len(sampler.calls) == 2
    envs.update_priorities(info2["start_id"], np.array([0.5, 2.0]))
    assert sampler.updates == [(info2["start_id"].tolist(), [0.5, 2.0])]

    frames = np.zeros((2, K, 64, 64, 3), np.uint8)
    frames[1] = 200
    obs, info = envs.reset(options={"start_states": (frames, np.zeros((2, K - 1), np.int64))})
    assert info["start_id"].tolist() == [-1, -1] and obs[0].max() == 0 and obs[1].min() == 200
    envs.update_priorities(info["start_id"], np.array([1.0, 1.0]))  # ids -1 are not the sampler's
    assert len(sampler.updates) == 1

    # user arrays as start_states: uniform over them
    user = DreamVectorEnv(sim, 2, device="cpu", start_states=(frames, np.zeros((2, K - 1), np.int64)))
    obs, info = user.reset(seed=1)
    np.testing.assert_array_equal(obs, frames[info["start_id"], -1])


# ------------------------------------------------------------------------------------------- options
def test_frame_stack_matches_the_shared_wrapper(sims):
    kw = dict(device="cpu", sample_termination=True, max_episode_steps=2)
    stacked = DreamVectorEnv(sims["coin"], 2, frame_stack=3, **kw)
    wrapped = FrameStackVector(DreamVectorEnv(sims["coin"], 2, **kw), 3)
    assert stacked.single_observation_space == wrapped.single_observation_space
    a, _ = stacked.reset(seed=5)
    b, _ = wrapped.reset(seed=5)
    assert a.shape == (2, 3, 64, 64, 3) and data_equivalence(a, b)
    for act in ([0, 1], [2, 3], [1, 1], [0, 2], [3, 0]):
        a = stacked.step(np.array(act))[0]
        b = wrapped.step(np.array(act))[0]
        assert data_equivalence(a, b)


def test_torch_output_and_render(sims):
    envs = DreamVectorEnv(sims["never"], 2, device="cpu", output="torch", render_mode="rgb_array")
    obs, _ = envs.reset(seed=0)
    assert torch.is_tensor(obs) and obs.dtype == torch.uint8 and obs.device == envs.device
    obs, reward, term, trunc, _ = envs.step(torch.tensor([0, 3]))
    assert reward.dtype == torch.float32 and term.dtype == torch.bool and trunc.dtype == torch.bool
    frames = envs.render()
    assert isinstance(frames, tuple) and len(frames) == 2 and np.array_equal(frames[1], obs[1].numpy())
    assert envs.get_action_meanings() == MEANINGS and envs.device.type == "cpu"


# ------------------------------------------------------------------------------------------- registration / errors
def test_registration_ids_entry_points_and_idempotence():
    for env_id in dream_env_ids():
        spec = gym.spec(env_id)
        assert spec.entry_point == "dws_gym.envs.dream:DreamEnv"
        assert spec.vector_entry_point == "dws_gym.envs.dream:DreamVectorEnv"
        assert spec.max_episode_steps == DEFAULT_MAX_EPISODE_STEPS
        assert {"simulator", "device", "sampling_steps", "start_states", "autoreset_mode"} <= set(spec.kwargs)
    assert set(dream_env_ids()) == {"dws/Breakout-v0", "dws/BattleZone-v0", "dws/CoinRun-v0", "dws/Ninja-v0",
                                    "dws/Dream-v0"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-registering would warn about overriding
        register_dream_envs()
        importlib.reload(dws_gym)
    gym.register_envs(dws_gym)


def test_missing_simulators_say_how_to_get_one():
    with pytest.raises(ValueError, match="needs simulator="):
        gym.make("dws/Dream-v0")
    for env_id, game in DREAM_GAMES.items():
        if game.default_simulator.is_dir():
            continue
        with pytest.raises(FileNotFoundError, match=r"python train_world_model\.py") as e:
            gym.make_vec(env_id, num_envs=2)
        msg = str(e.value)
        assert f"python train_world_model.py --env-id {game.real_env_id} --output-dir runs/{game.folder}" in msg
        assert f'simulator="runs/{game.folder}/simulator"' in msg and 'simulator="user/repo"' in msg
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        gym.make("dws/Dream-v0", simulator="nobody/no-such-simulator")


def test_bad_input_raises_value_errors(sims):
    with pytest.raises(ValueError, match=r"dws/BattleZone-v0 dreams ALE/BattleZone-v5 .*ALE/Breakout-v5"):
        gym.make_vec("dws/BattleZone-v0", num_envs=1, simulator=sims["never"], device="cpu")
    with pytest.raises(ValueError, match="Discrete\\(15\\)"):
        gym.make("dws/CoinRun-v0", simulator=sims["never"], device="cpu")
    envs = DreamVectorEnv(sims["never"], 2, device="cpu")
    with pytest.raises(ValueError, match="before reset"):
        envs.step(np.array([0, 0]))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        envs.step(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="dtype"):
        envs.step(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="integer"):
        envs.step(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        envs.step(np.array([0, 4]))
    with pytest.raises(ValueError, match="NaN"):
        envs.step(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="Unknown reset options"):
        envs.reset(options={"seed": 3})
    with pytest.raises(ValueError, match="reset_mask must be bool"):
        envs.reset(options={"reset_mask": np.array([1, 0])})
    for bad, message in [
        (dict(autoreset_mode="sometimes"), r"autoreset_mode must be one of .*got 'sometimes'"),
        (dict(output="jax"), r"output must be 'numpy' or 'torch', got 'jax'"),
        (dict(frame_stack=0), r"frame_stack must be an integer >= 1, got 0"),
        (dict(render_mode="human"), r"render_mode must be None or 'rgb_array' .*got 'human'"),
        (dict(max_episode_steps=0), r"max_episode_steps must be None or an integer >= 1, got 0"),
        (dict(sampling_steps=0), r"sampling_steps must be None or an integer >= 1, got 0"),
        (dict(device="tpu9"), r"device must be 'auto', 'cpu', 'cuda'.*got 'tpu9'"),
    ]:
        with pytest.raises(ValueError, match=message):
            DreamVectorEnv(sims["never"], 1, **bad)
    with pytest.raises(TypeError, match="DreamEnv is one env: drop num_envs"):
        DreamEnv(sims["never"], num_envs=2)
    with pytest.raises(ValueError, match="frame_stack must be an integer >= 1, got 0"):
        DreamEnv(sims["never"], frame_stack=0)  # the single env forwards its arguments to the vector env
    stacked = DreamEnv(sims["never"], device="cpu", frame_stack=2, render_mode="rgb_array", env_id="dws/Dream-v0")
    assert stacked.observation_space.shape == (2, 64, 64, 3)
    assert stacked.render_mode == "rgb_array" and stacked.env_id == "dws/Dream-v0"
    single = DreamEnv(sims["never"], device="cpu")
    with pytest.raises(ValueError, match="before reset"):
        single.step(0)
    single.reset(seed=0)
    with pytest.raises(ValueError, match="one integer action"):
        single.step(np.array([0, 1]))


def test_simulator_for_real_env_names_the_shipped_folder_or_says_why_not():
    from dws_gym.envs.registration import simulator_for_real_env

    assert simulator_for_real_env("ALE/Breakout-v5") == str(DREAM_GAMES["dws/Breakout-v0"].default_simulator)
    with pytest.raises(ValueError, match=r"No dws/\* game imitates ALE/Pong-v5"):
        simulator_for_real_env("ALE/Pong-v5")
    for game in DREAM_GAMES.values():
        if not game.default_simulator.is_dir():
            with pytest.raises(FileNotFoundError, match="No simulator ships"):
                simulator_for_real_env(game.real_env_id)


@pytest.mark.parametrize("env_id", [e for e, g in DREAM_GAMES.items() if g.default_simulator.is_dir()])
def test_every_shipped_id_makes_resets_steps_and_passes_check_env(env_id):
    game = DREAM_GAMES[env_id]
    env = gym.make(env_id, device="cpu", dtype="fp32")
    assert env.action_space.n == game.num_actions and env.unwrapped.simulator.config.env_id == game.real_env_id
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and np.isfinite(reward)
    recorded = Simulator.from_pretrained(game.default_simulator).config.metrics["acceptance"]
    assert recorded["all"] is True  # the shipped simulator passes its held-out table
