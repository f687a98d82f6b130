"""Policy networks, their preprocessing, checkpoints and env-compatibility checks (dws_gym.agents)."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.spaces import Box, Discrete, MultiDiscrete
from safetensors.torch import load_file

import dws_gym.agents as agents
from dws_gym.agents import (
    ActorCritic,
    ImpalaCNN,
    NatureCNN,
    Policy,
    PolicyConfig,
    RandomPolicy,
    check_policy_matches,
    load_policy,
    save_policy,
)

MEANINGS = ["NOOP", "FIRE", "RIGHT", "LEFT"]


def make_policy(arch: str = "nature", stack: int = 1, seed: int = 0, **kw) -> ActorCritic:
    torch.manual_seed(seed)
    shape = (stack, 64, 64, 3) if stack > 1 else (64, 64, 3)
    return ActorCritic(PolicyConfig(arch=arch, obs_shape=shape, num_actions=4, env_id="ALE/Breakout-v5", **kw))


def frames(n: int, stack: int = 1, seed: int = 0) -> np.ndarray:
    shape = (n, stack, 64, 64, 3) if stack > 1 else (n, 64, 64, 3)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


class TinyEnv(gym.Env):
    """A minimal env with the package's frame format (a stand-in for a real or dream env)."""

    def __init__(self, shape=(64, 64, 3), n=4, meanings=None):
        self.observation_space = Box(0, 255, shape, np.uint8)
        self.action_space = Discrete(n)
        self._meanings = meanings

    def get_action_meanings(self):
        return list(self._meanings) if self._meanings else None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


# ------------------------------------------------------------------------------------------------ forward / shapes


@pytest.mark.parametrize("arch", ["nature", "impala"])
@pytest.mark.parametrize("stack", [1, 4])
def test_forward_shapes_numpy_and_torch(arch, stack):
    policy = make_policy(arch, stack)
    obs = frames(3, stack)
    logits, value = policy(obs)
    assert logits.shape == (3, 4) and value.shape == (3, 1)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all() and torch.isfinite(value).all()
    logits_t, value_t = policy(torch.from_numpy(obs))
    torch.testing.assert_close(logits, logits_t, rtol=0, atol=0)
    torch.testing.assert_close(value, value_t, rtol=0, atol=0)
    assert policy.get_value(obs).shape == (3, 1)
    # the default widths of the design: Nature 512 features, IMPALA 256
    assert policy.trunk.out_features == (512 if arch == "nature" else 256)
    assert isinstance(policy.trunk, NatureCNN if arch == "nature" else ImpalaCNN)


def test_preprocess_concatenates_stacked_frames_on_channels_in_stack_order():
    policy = make_policy("nature", stack=4)
    obs = frames(2, 4)
    x = policy.preprocess(obs)
    assert x.shape == (2, 12, 64, 64) and x.dtype == torch.float32
    for j in range(4):
        for c in range(3):
            expected = torch.from_numpy(obs[:, j, :, :, c]).float() / 255.0
            torch.testing.assert_close(x[:, 3 * j + c], expected)
    single = make_policy("nature").preprocess(obs[:, 0])
    torch.testing.assert_close(single, x[:, :3])


def test_read_only_numpy_observations_are_accepted():
    policy = make_policy()
    obs = frames(2)
    obs.setflags(write=False)
    logits, _ = policy(obs)
    assert logits.shape == (2, 4)


def test_bad_observations_raise_clear_errors():
    policy = make_policy("nature", stack=4)
    with pytest.raises(ValueError, match="uint8"):
        policy(frames(2, 4).astype(np.float32))
    with pytest.raises(ValueError, match=r"add a batch axis"):
        policy(frames(1, 4)[0])
    with pytest.raises(ValueError, match=r"\(N, 4, 64, 64, 3\)"):
        policy(frames(2, 1))


def test_orthogonal_init_gains():
    policy = make_policy("impala")
    w_actor = policy.actor.weight.detach()
    torch.testing.assert_close(w_actor @ w_actor.T, 0.01**2 * torch.eye(4), atol=1e-7, rtol=0)
    assert torch.linalg.norm(policy.critic.weight).item() == pytest.approx(1.0, rel=1e-5)
    for m in policy.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.count_nonzero(m.bias) == 0
    w_fc = policy.trunk.fc[0].weight.detach()  # (256, 2048): orthonormal rows scaled by sqrt(2)
    torch.testing.assert_close(w_fc @ w_fc.T, 2.0 * torch.eye(256), atol=1e-4, rtol=0)


def test_config_validation():
    with pytest.raises(ValueError, match="frame_stack"):
        PolicyConfig(arch="nature", obs_shape=(4, 64, 64, 3), num_actions=4, frame_stack=2)
    with pytest.raises(ValueError, match="arch"):
        PolicyConfig(arch="resnet", obs_shape=(64, 64, 3), num_actions=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="action_meanings"):
        PolicyConfig(arch="nature", obs_shape=(64, 64, 3), num_actions=4, action_meanings=["NOOP"])
    with pytest.raises(ValueError, match="too small"):
        ActorCritic(PolicyConfig(arch="nature", obs_shape=(16, 16, 3), num_actions=4))
    cfg = PolicyConfig(arch="impala", obs_shape=[4, 64, 64, 3], num_actions=6)
    assert cfg.frame_stack == 4 and cfg.channels == (16, 32, 32) and cfg.hidden_size == 256
    cfg2 = PolicyConfig.from_spaces(Box(0, 255, (64, 64, 3), np.uint8), Discrete(15), arch="impala",
                                    env_id="procgen/coinrun")
    assert cfg2.obs_shape == (64, 64, 3) and cfg2.num_actions == 15 and cfg2.frame_stack == 1
    assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ------------------------------------------------------------------------------------------------ acting / gradients


@pytest.mark.parametrize("arch", ["nature", "impala"])
def test_get_action_and_value_gradients_reach_every_parameter(arch):
    policy = make_policy(arch, stack=2)
    obs = frames(4, 2)
    action, logprob, entropy, value = policy.get_action_and_value(obs)
    assert action.shape == logprob.shape == entropy.shape == (4,) and value.shape == (4, 1)
    assert action.dtype == torch.int64
    (-(logprob.sum()) + value.pow(2).sum() - entropy.sum()).backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_get_action_and_value_scores_given_actions():
    policy = make_policy()
    obs = frames(5)
    given = np.array([0, 1, 2, 3, 1])
    action, logprob, entropy, _ = policy.get_action_and_value(obs, given)
    logits, _ = policy(obs)
    log_p = torch.log_softmax(logits, dim=1)
    assert action.tolist() == given.tolist()
    torch.testing.assert_close(logprob, log_p[torch.arange(5), action])
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum(1))
    with pytest.raises(ValueError, match="actions of shape"):
        policy.get_action_and_value(obs, given[:3])


def test_act_is_reproducible_with_seeded_generator_and_argmax_when_deterministic():
    policy = make_policy()
    # scale the actor so the distribution is far from uniform and sampling differences would show
    with torch.no_grad():
        policy.actor.weight.mul_(300.0)
    obs = frames(64)
    a1 = policy.act(obs, generator=torch.Generator().manual_seed(7))
    a2 = policy.act(obs, generator=torch.Generator().manual_seed(7))
    assert isinstance(a1, np.ndarray) and a1.dtype == np.int64 and a1.shape == (64,)
    np.testing.assert_array_equal(a1, a2)
    draws = {tuple(policy.act(obs, generator=torch.Generator().manual_seed(s))) for s in range(5)}
    assert len(draws) > 1, "different seeds should give different samples"
    logits, _ = policy(obs)
    np.testing.assert_array_equal(policy.act(obs, deterministic=True), logits.argmax(1).numpy())
    t = policy.act(torch.from_numpy(obs), deterministic=True)
    assert isinstance(t, torch.Tensor) and t.tolist() == logits.argmax(1).tolist()
    assert isinstance(policy, Policy)


def test_a_q_value_policy_acts_greedily_even_when_asked_to_sample():
    policy = make_policy()
    policy.config.extra["logits"] = "q_values"  # offline/cql.py's Q-network
    obs = frames(64)
    greedy = policy(obs)[0].argmax(1).numpy()
    for seed in range(3):  # logits near 0 at init: a softmax draw would differ from argmax on most rows
        np.testing.assert_array_equal(policy.act(obs, generator=torch.Generator().manual_seed(seed)), greedy)


def test_random_policy():
    obs = frames(500)
    a = RandomPolicy(4, seed=3).act(obs)
    b = RandomPolicy(4, seed=3).act(obs)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (500,) and set(a.tolist()) == {0, 1, 2, 3}
    assert not np.array_equal(a, RandomPolicy(4, seed=4).act(obs))
    rp = RandomPolicy(4, seed=3)
    np.testing.assert_array_equal(rp.act(obs, generator=torch.Generator().manual_seed(9)),
                                  RandomPolicy(4, seed=9).act(obs))
    t = rp.act(torch.from_numpy(obs))
    assert isinstance(t, torch.Tensor) and t.shape == (500,)
    assert isinstance(rp, Policy) and rp.tag == "random"
    with pytest.raises(ValueError, match=r"num_actions >= 1, got 0"):
        RandomPolicy(0)


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("arch,stack", [("nature", 4), ("impala", 1)])
def test_save_load_round_trip_identical_outputs(tmp_path, arch, stack):
    policy = make_policy(arch, stack, action_meanings=MEANINGS, extra={"run": "x"})
    obs = frames(3, stack)
    ckpt = save_policy(policy, tmp_path / "ckpt", extra={"global_step": 123})
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["format_version"] == agents.FORMAT_VERSION
    assert meta["env_id"] == "ALE/Breakout-v5" and meta["frame_stack"] == stack
    assert "divided by 255" in meta["preprocessing"]
    assert meta["extra"] == {"run": "x", "global_step": 123}
    assert policy.config.extra == {"run": "x"}, "save must not mutate the live config"
    assert set(load_file(str(ckpt / "model.safetensors"))) == set(policy.state_dict())

    loaded = load_policy(ckpt)
    assert loaded.config.obs_shape == policy.config.obs_shape and loaded.config.action_meanings == MEANINGS
    assert not loaded.training
    with torch.no_grad():
        for a, b in zip(policy(obs), loaded(obs)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a different init gives different outputs, so the equality above is not trivial
    other = make_policy(arch, stack, seed=1)
    with torch.no_grad():
        assert not torch.equal(other(obs)[0], loaded(obs)[0])


def test_overwrite_replaces_and_interrupted_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    obs = frames(2)
    first, second = make_policy(seed=0), make_policy(seed=1)
    path = tmp_path / "policy"
    save_policy(first, path)
    save_policy(second, path)  # overwrite
    with torch.no_grad():
        torch.testing.assert_close(load_policy(path)(obs)[0], second(obs)[0], rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["policy"], "no temp or backup folders left behind"

    def crash_mid_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")  # a half-written weights file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(agents, "save_file", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_policy(first, path)
    with torch.no_grad():
        torch.testing.assert_close(load_policy(path)(obs)[0], second(obs)[0], rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]


def test_save_refuses_to_replace_non_checkpoints(tmp_path):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a policy checkpoint"):
        save_policy(make_policy(), precious)
    assert (precious / "keep.txt").read_text() == "x"
    with pytest.raises(ValueError, match="ActorCritic"):
        save_policy(RandomPolicy(4), tmp_path / "r")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        save_policy(make_policy(), tmp_path / "p", extra={"bad": object()})
    assert not (tmp_path / "p").exists()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="No policy checkpoint folder"):
        load_policy(tmp_path / "nothing")

    path = save_policy(make_policy(), tmp_path / "p")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_policy(path)

    path = save_policy(make_policy(), tmp_path / "q")
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(path)

    path = save_policy(make_policy(), tmp_path / "r")
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_policy(path)

    def edit(p, **changes):
        meta = json.loads((p / "config.json").read_text())
        meta.update(changes)
        (p / "config.json").write_text(json.dumps(meta))

    path = save_policy(make_policy(), tmp_path / "s")
    edit(path, format_version=99)
    with pytest.raises(ValueError, match="format_version 99.*Upgrade"):
        load_policy(path)

    path = save_policy(make_policy(), tmp_path / "t")
    edit(path, num_actions=6)
    with pytest.raises(ValueError, match=r"actor\.weight: file \(4, 512\) vs config \(6, 512\)"):
        load_policy(path)

    path = save_policy(make_policy(), tmp_path / "u")
    edit(path, arch="impala")
    with pytest.raises(ValueError, match="missing weights"):
        load_policy(path)

    path = save_policy(make_policy(), tmp_path / "v")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_policy(path)

    with pytest.raises(ValueError, match="is a file"):
        load_policy(path / "config.json")


def test_load_points_at_backup_left_between_renames(tmp_path):
    path = save_policy(make_policy(), tmp_path / "p")
    path.rename(tmp_path / ".p.old-deadbeef")  # what a crash between the two renames leaves
    with pytest.raises(FileNotFoundError, match=r"\.p\.old-deadbeef"):
        load_policy(path)


# ------------------------------------------------------------------------------------------------ env compatibility


def test_check_policy_matches_spaces():
    policy = make_policy("nature", stack=4, action_meanings=MEANINGS)
    good_obs, good_act = Box(0, 255, (4, 64, 64, 3), np.uint8), Discrete(4)
    check_policy_matches(policy, good_obs, good_act)
    check_policy_matches(policy.config, good_obs, good_act, action_meanings=MEANINGS)
    cases = [
        (Box(0, 255, (64, 64, 3), np.uint8), good_act, None, "frame stack differs"),
        (Box(0, 255, (8, 4, 64, 64, 3), np.uint8), good_act, None, "single_observation_space"),
        (Box(0, 1, (4, 64, 64, 3), np.float32), good_act, None, "not uint8"),
        (good_obs, Discrete(6), None, "env has 6 actions"),
        (good_obs, Discrete(4, start=1), None, "starts at 1"),
        (good_obs, MultiDiscrete([4] * 8), None, "single_action_space"),
        (good_obs, Box(-1, 1, (2,)), None, "not Discrete"),
        (good_obs, good_act, ["NOOP", "UP", "RIGHT", "LEFT"], "action meanings"),
    ]
    for obs_space, act_space, meanings, message in cases:
        with pytest.raises(ValueError, match=message):
            check_policy_matches(policy, obs_space, act_space, action_meanings=meanings)


def test_load_policy_with_env_checks_single_and_vector_envs(tmp_path):
    path = save_policy(make_policy(action_meanings=MEANINGS), tmp_path / "p")
    policy = load_policy(path, env=TinyEnv(meanings=MEANINGS))
    vec = gym.vector.SyncVectorEnv([lambda: TinyEnv(meanings=MEANINGS) for _ in range(3)])
    policy = load_policy(path, env=vec)  # uses the single-env spaces of a vector env
    obs, _ = vec.reset(seed=0)
    actions = policy.act(obs, generator=torch.Generator().manual_seed(0))
    assert actions.shape == (3,) and vec.single_action_space.contains(int(actions[0]))
    vec.step(actions)
    vec.close()
    with pytest.raises(ValueError, match="env has 6 actions"):
        load_policy(path, env=TinyEnv(n=6))
    with pytest.raises(ValueError, match="action meanings"):
        load_policy(path, env=TinyEnv(meanings=["NOOP", "FIRE", "UP", "DOWN"]))
    with pytest.raises(ValueError, match="observation shape"):
        load_policy(path, env=TinyEnv(shape=(84, 84, 3)))


def test_failure_while_moving_new_checkpoint_in_puts_old_one_back(tmp_path, monkeypatch):
    obs = frames(2)
    first, second = make_policy(seed=0), make_policy(seed=1)
    path = save_policy(first, tmp_path / "policy")
    real_rename = agents.os.rename
    calls = []

    def rename_fails_second_time(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old moved aside; moving the new one in fails
            raise OSError("disk went away")
        real_rename(src, dst)

    monkeypatch.setattr(agents.os, "rename", rename_fails_second_time)
    with pytest.raises(OSError, match="disk went away"):
        save_policy(second, path)
    monkeypatch.undo()
    assert calls[0][0] == "policy" and calls[0][1].startswith(".policy.old-")
    with torch.no_grad():
        torch.testing.assert_close(load_policy(path)(obs)[0], first(obs)[0], rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]
