"""Tests of the reward / termination head and its training (dws_gym/models/reward.py, reward_training.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from dws_gym.data.store import TrajectoryStore
from dws_gym.models.reward import (
    RewardConfig,
    RewardHead,
    RewardOutput,
    class_balanced_weights,
    load_reward_head,
    reward_to_sign_class,
    save_reward_head,
    symexp,
    symlog,
    termination_pos_weight,
    twohot_encode,
    twohot_expectation,
)
from dws_gym.models.reward_training import (
    DreamedTransitions,
    RareEventSampler,
    balance_weights_from_data,
    fit_reward_head,
    mixed_batches,
    reward_ends_episode_in,
    reward_head_batches,
    sign_values_from_rewards,
)
from dws_gym.models.unet import UNetConfig, UNetWorldModel

SMALL = dict(context_frames=2, frame_shape=(32, 32, 3), num_actions=4, dim=32, depth=1, num_heads=2)


def _frames(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


def _inputs(cfg: RewardConfig, b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w, c = cfg.frame_shape
    return (_frames(g, b, cfg.context_frames, h, w, c), torch.randint(0, cfg.num_actions or 1, (b,), generator=g),
            _frames(g, b, h, w, c))


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def test_symlog_symexp_are_inverse() -> None:
    x = torch.tensor([-1e4, -20.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 7.0, 1e4], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(symlog(symexp(x[2:-1])), x[2:-1], rtol=1e-12, atol=1e-12)
    assert symlog(torch.tensor(0.0)) == 0 and symlog(torch.tensor(math.e - 1)) == pytest.approx(1.0)
    assert bool((symlog(x).abs() <= x.abs()).all())  # compresses magnitudes


def test_twohot_round_trip() -> None:
    bins = torch.linspace(-20, 20, 255)
    # On a bin: all weight on that bin, and decoding gives the bin back exactly (ends included).
    on = bins[[0, 3, 127, 200, 254]]
    enc = twohot_encode(on, bins)
    assert enc.shape == (5, 255)
    assert torch.equal(enc.argmax(-1), torch.tensor([0, 3, 127, 200, 254]))
    assert torch.equal(enc.max(-1).values, torch.ones(5))
    assert torch.equal(twohot_expectation(enc.log(), bins), on)
    # Between bins: two neighbours, weights summing to 1, mean equal to the value.
    between = symlog(torch.tensor([-3.7, -0.3, 0.01, 1.0, 2.5, 1234.5]))
    enc = twohot_encode(between, bins)
    assert bool((enc >= 0).all()) and torch.allclose(enc.sum(-1), torch.ones(6))
    assert torch.equal((enc > 0).sum(-1), torch.full((6,), 2))
    torch.testing.assert_close(twohot_expectation(enc.log(), bins), between, rtol=0, atol=1e-5)
    torch.testing.assert_close(symexp(twohot_expectation(enc.log(), bins)),
                               torch.tensor([-3.7, -0.3, 0.01, 1.0, 2.5, 1234.5]), rtol=1e-4, atol=1e-5)
    # Outside the range: clipped to the end bins; any leading shape works.
    enc = twohot_encode(torch.tensor([[-100.0, 100.0]]), bins)
    assert enc.shape == (1, 2, 255) and enc[0, 0, 0] == 1 and enc[0, 1, -1] == 1
    with pytest.raises(ValueError, match="increasing"):
        twohot_encode(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="bins"):
        twohot_expectation(torch.zeros(2, 7), bins)


def test_reward_to_sign_class() -> None:
    r = torch.tensor([-5.0, -0.1, 0.0, 0.2, 30.0])
    assert torch.equal(reward_to_sign_class(r), torch.tensor([0, 0, 1, 2, 2]))
    with pytest.raises(ValueError, match="reward must be numeric, got a bool tensor"):
        reward_to_sign_class(torch.tensor([True]))


def test_class_balancing_upweights_rare_classes() -> None:
    # 90 zero rewards, 8 positive, 2 negative.
    w = class_balanced_weights(torch.tensor([2, 90, 8]), max_weight=100.0)
    torch.testing.assert_close(w, torch.tensor([45.0, 1.0, 11.25]))
    assert w[0] > w[2] > w[1]
    w = class_balanced_weights(torch.tensor([2, 90, 8]))  # default clip 10
    torch.testing.assert_close(w, torch.tensor([10.0, 1.0, 10.0]))
    assert termination_pos_weight(torch.tensor([True] + [False] * 4)) == 4.0
    assert termination_pos_weight(torch.tensor([True] + [False] * 99)) == 10.0  # clipped
    assert termination_pos_weight(torch.zeros(8, dtype=torch.bool)) == 1.0
    rewards = np.array([0.0] * 96 + [1.0, 1.0, -2.0, 4.0], np.float32)
    class_weights, pos_weight = balance_weights_from_data(rewards, np.array([False] * 98 + [True] * 2), 50, 20)
    assert class_weights == pytest.approx([50.0, 1.0, 32.0]) and pos_weight == 20.0
    with pytest.raises(ValueError, match=r"max_weight must be a finite number >= 1, got 0\.5"):
        class_balanced_weights(torch.tensor([1, 2, 3]), max_weight=0.5)


def test_loss_applies_class_weights_and_pos_weight() -> None:
    cfg = RewardConfig(**SMALL)
    head = RewardHead(cfg)
    torch.nn.init.normal_(head.reward_out.weight, std=0.5)  # non-trivial logits
    torch.nn.init.normal_(head.termination_out.weight, std=0.5)
    ctx, act, nxt = _inputs(cfg, 10)
    reward = torch.tensor([0.0] * 7 + [1.0, 1.0, -3.0])
    term = torch.tensor([False] * 8 + [True, False])
    batch = dict(obs=ctx, action=act, reward=reward, terminated=term, next_obs=nxt)
    loss, logs = head.loss(batch)
    out = head(ctx, act, nxt)
    cls = reward_to_sign_class(reward)
    cw = torch.tensor([7.0, 1.0, 3.5])  # n_max / n_c from this batch: 7/1, 7/7, 7/2
    expected = F.cross_entropy(out.reward_logits, cls, weight=cw) + F.binary_cross_entropy_with_logits(
        out.termination_logit, term.float(), pos_weight=torch.tensor(9.0))
    torch.testing.assert_close(loss, expected)
    assert logs["class_weight_neg"] == 7.0 and logs["class_weight_pos"] == 3.5 and logs["pos_weight"] == 9.0
    # Weights passed in (dataset statistics) win over the batch's, and config weights over the batch's.
    loss_flat, logs_flat = head.loss(batch, class_weights=[1.0, 1.0, 1.0], pos_weight=1.0)
    torch.testing.assert_close(loss_flat, F.cross_entropy(out.reward_logits, cls)
                               + F.binary_cross_entropy_with_logits(out.termination_logit, term.float()))
    head.config.class_weights, head.config.termination_pos_weight = (1.0, 1.0, 1.0), 1.0
    torch.testing.assert_close(head.loss(batch)[0], loss_flat)
    assert set(logs) >= {"reward_loss", "termination_loss", "reward_accuracy", "termination_recall"}


# --------------------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sign", "twohot"])
def test_shapes_and_untrained_prior(mode: str) -> None:
    cfg = RewardConfig(mode=mode, **SMALL)
    head = RewardHead(cfg)
    ctx, act, nxt = _inputs(cfg, 5)
    out = head(ctx, act, nxt)
    assert isinstance(out, RewardOutput)
    assert out.reward_logits.shape == (5, 3 if mode == "sign" else 255) and out.termination_logit.shape == (5,)
    reward, term = head.predict(ctx.numpy(), act.numpy(), nxt.numpy())  # numpy input works too
    assert reward.dtype == torch.float32 and reward.shape == (5,)
    assert term.dtype == torch.bool and term.shape == (5,)
    # An untrained head reads as a quiet transition: no reward, not terminated.
    torch.testing.assert_close(reward, torch.zeros(5), rtol=0, atol=1e-6)
    assert not bool(term.any())


def test_default_head_is_tiny_and_takes_external_action_embeddings() -> None:
    head = RewardHead()
    n = sum(p.numel() for p in head.parameters())
    assert 100_000 < n < 1_000_000, n
    out = head(*_inputs(head.config, 2))
    assert out.reward_logits.shape == (2, 3)
    cfg = RewardConfig(**{**SMALL, "num_actions": None, "action_embed_dim": 16})
    head = RewardHead(cfg)
    ctx, _, nxt = _inputs(cfg, 3)
    emb = torch.randn(3, 16)
    assert head(ctx, emb, nxt).termination_logit.shape == (3,)
    with pytest.raises(ValueError, match="action table"):
        head(ctx, torch.zeros(3, dtype=torch.long), nxt)
    with pytest.raises(ValueError, match="num_actions"):
        RewardConfig(num_actions=None)


def test_predict_sampling_is_reproducible_and_uses_only_the_generator() -> None:
    cfg = RewardConfig(mode="twohot", **SMALL)
    head = RewardHead(cfg)
    torch.nn.init.normal_(head.reward_out.weight, std=0.3)
    torch.nn.init.normal_(head.termination_out.weight, std=3.0)
    ctx, act, nxt = _inputs(cfg, 64)
    global_state = torch.get_rng_state()
    r1, t1 = head.predict(ctx, act, nxt, sample=True, generator=torch.Generator().manual_seed(7))
    r2, t2 = head.predict(ctx, act, nxt, sample=True, generator=torch.Generator().manual_seed(7))
    r3, t3 = head.predict(ctx, act, nxt, sample=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator was not touched
    assert torch.equal(r1, r2) and torch.equal(t1, t2)
    assert not (torch.equal(r1, r3) and torch.equal(t1, t3))
    # Sampled rewards are bin values; the default (expected) prediction is deterministic.
    assert bool(torch.isin(r1, symexp(head.bins)).all())
    d1, d2 = head.predict(ctx, act, nxt), head.predict(ctx, act, nxt)
    assert torch.equal(d1[0], d2[0]) and torch.equal(d1[1], d2[1])
    # Sign mode samples class values only.
    head = RewardHead(RewardConfig(**SMALL))
    torch.nn.init.zeros_(head.reward_out.bias)  # uniform over the three classes
    r, _ = head.predict(ctx, act, nxt, sample=True, generator=torch.Generator().manual_seed(0))
    assert set(r.tolist()) <= {-1.0, 0.0, 1.0} and len(set(r.tolist())) > 1


def test_bad_inputs_raise_value_error() -> None:
    cfg = RewardConfig(**SMALL)
    head = RewardHead(cfg)
    ctx, act, nxt = _inputs(cfg, 4)
    bad = [
        (ctx.float(), act, nxt, "uint8"),
        (ctx, act, nxt.to(torch.int32), "uint8"),
        (ctx[:, :1], act, nxt, "last K"),
        (ctx[..., :16, :], act, nxt, "context must have shape"),
        (ctx, act, nxt[:3], "batch"),
        (ctx, act, nxt[..., :2], "next_frame must have shape"),
        (ctx, act[:3], nxt, "shape"),
        (ctx, act + 4, nxt, r"\[0, 4\)"),
        (ctx, act.float(), nxt, "action_embed_dim"),
        (ctx, act.bool(), nxt, "dtype"),
        (ctx.tolist(), act, nxt, "numpy"),
    ]
    for c, a, n, msg in bad:
        with pytest.raises(ValueError, match=msg):
            head(c, a, n)
    batch = dict(obs=ctx, action=act, reward=torch.zeros(4), terminated=torch.zeros(4, dtype=torch.bool),
                 next_obs=nxt)
    with pytest.raises(ValueError, match="lacks keys"):
        head.loss({k: v for k, v in batch.items() if k != "reward"})
    with pytest.raises(ValueError, match="NaN"):
        head.loss({**batch, "reward": torch.tensor([0.0, math.nan, 0.0, 0.0])})
    with pytest.raises(ValueError, match="shape"):
        head.loss({**batch, "terminated": torch.zeros(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="class_weights"):
        head.loss(batch, class_weights=[1.0, 2.0])
    for kwargs, msg in [({"mode": "clip"}, "mode"), ({"patch_size": 6}, "power of two"),
                        ({"frame_shape": (60, 64, 3)}, "divisible"), ({"dim": 30, "num_heads": 4}, "divisible"),
                        ({"class_weights": (1.0, 0.0, 1.0)}, "class_weights")]:
        with pytest.raises(ValueError, match=msg):
            RewardConfig(**kwargs)


def test_a_head_that_reads_the_last_frame_ignores_older_ones_and_does_less_work(tmp_path) -> None:
    cfg = RewardConfig(**{**SMALL, "context_frames": 3, "memory_frames": 1})
    head = RewardHead(cfg)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))  # scores that vary with every input
    ctx, act, nxt = _inputs(cfg, 4)
    out = head(ctx, act, nxt)
    older = ctx.clone()
    older[:, :2] = 255 - older[:, :2]  # only the frames it does not read change
    same = head(older, act, nxt)
    torch.testing.assert_close(same.reward_logits, out.reward_logits)
    last = ctx.clone()
    last[:, -1] = 255 - last[:, -1]
    assert not torch.allclose(head(last, act, nxt).reward_logits, out.reward_logits)
    # the tokens of all K context frames (the simulator's rolling cache) give the same logits
    tokens = head.frame_tokens(torch.cat([ctx, nxt[:, None]], dim=1))
    torch.testing.assert_close(head.logits_from_tokens(tokens, act).reward_logits, out.reward_logits,
                               atol=1e-5, rtol=1e-5)
    # the same weights reading every frame score differently: the option changes the attention's memory
    every = RewardHead(RewardConfig(**{**SMALL, "context_frames": 3}))
    every.load_state_dict(head.state_dict())
    assert not torch.allclose(every(ctx, act, nxt).reward_logits, out.reward_logits)
    flops = []
    for h in (head, every):
        with FlopCounterMode(display=False) as counter:
            h.logits_from_tokens(tokens, act)
        flops.append(counter.get_total_flops())
    assert flops[0] < flops[1]  # fewer keys and values in the cross-attention
    save_reward_head(head, tmp_path / "h")
    assert load_reward_head(tmp_path / "h").config.memory_frames == 1
    assert RewardConfig.from_dict({k: v for k, v in every.config.to_dict().items() if k != "memory_frames"}
                                  ).read_frames == 3  # heads saved before the option read every frame
    for bad, msg in [(0, "memory_frames"), (4, "exceeds context_frames=3")]:
        with pytest.raises(ValueError, match=msg):
            RewardConfig(**{**SMALL, "context_frames": 3, "memory_frames": bad})


def test_save_load_round_trip(tmp_path) -> None:
    cfg = RewardConfig(mode="twohot", class_weights=(3.0, 1.0, 2.0), **SMALL)
    head = RewardHead(cfg)
    torch.nn.init.normal_(head.reward_out.weight, std=0.3)
    ctx, act, nxt = _inputs(cfg, 3)
    # state_dict through safetensors + config through JSON.
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "w.safetensors"))
    text = json.dumps(cfg.to_dict())
    clone = RewardHead(RewardConfig.from_dict(json.loads(text)))
    clone.load_state_dict(load_file(str(tmp_path / "w.safetensors")), strict=True)
    assert clone.config == cfg
    torch.testing.assert_close(clone(ctx, act, nxt).reward_logits, head(ctx, act, nxt).reward_logits, rtol=0, atol=0)
    # The single-file form.
    path = save_reward_head(head, tmp_path / "sub" / "reward.safetensors")
    loaded = load_reward_head(path)
    assert loaded.config == cfg
    assert torch.equal(loaded.predict(ctx, act, nxt)[0], head.predict(ctx, act, nxt)[0])
    with pytest.raises(FileNotFoundError, match="save_reward_head"):
        load_reward_head(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not a reward head"):
        load_reward_head(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="unknown"):
        RewardConfig.from_dict({**cfg.to_dict(), "extra_key": 1})


def test_sign_values_follow_the_data_where_each_sign_has_one_value(tmp_path) -> None:
    assert sign_values_from_rewards(np.array([0, 0, 10, 10], np.float32)) == (-1.0, 0.0, 10.0)  # CoinRun's coin
    assert sign_values_from_rewards(np.array([0, 1, 4, 7, -2])) == (-2.0, 0.0, 1.0)  # Breakout's bricks: clipped
    assert sign_values_from_rewards(torch.zeros(5)) == (-1.0, 0.0, 1.0)  # no reward seen: the clipped default
    with pytest.raises(ValueError, match="NaN"):
        sign_values_from_rewards(np.array([0.0, np.nan]))
    cfg = RewardConfig(sign_values=(-1.0, 0.0, 10.0), **SMALL)
    assert RewardConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).sign_values == (-1.0, 0.0, 10.0)
    head = RewardHead(cfg)
    ctx, act, nxt = _inputs(cfg, 4)
    with torch.no_grad():
        head.reward_out.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # every transition pays
    assert head.predict(ctx, act, nxt)[0].tolist() == [10.0] * 4
    assert load_reward_head(save_reward_head(head, tmp_path / "r.safetensors")).predict(ctx, act, nxt)[0][0] == 10.0
    head.set_sign_values((-3.0, 0.0, 2.0))
    assert head.predict(ctx, act, nxt)[0].tolist() == [2.0] * 4 and head.config.sign_values == (-3.0, 0.0, 2.0)
    for bad in ((1.0, 0.0, 1.0), (-1.0, 0.5, 1.0), (-1.0, 0.0, float("inf")), (-1.0, 1.0)):
        with pytest.raises(ValueError, match="sign_values"):
            RewardConfig(sign_values=bad, **SMALL)
        with pytest.raises(ValueError, match="sign_values"):
            head.set_sign_values(bad)
    assert head.config.sign_values == (-3.0, 0.0, 2.0)  # a rejected change leaves the head as it was


def test_in_a_game_that_ends_on_every_reward_a_dreamed_reward_terminates(tmp_path) -> None:
    coinrun_rewards, coinrun_terms = np.array([0, 0, 10, 0, 0]), np.array([0, 0, 1, 0, 1], bool)  # a coin; a death
    assert reward_ends_episode_in(coinrun_rewards, coinrun_terms) is True
    assert reward_ends_episode_in(np.array([0, 1, 0, 4]), np.array([0, 0, 0, 1], bool)) is False  # Breakout
    assert reward_ends_episode_in(np.zeros(4), np.ones(4, bool)) is False  # no reward seen: no rule
    with pytest.raises(ValueError, match="one entry per step"):
        reward_ends_episode_in(np.zeros(4), np.zeros(3, bool))
    # Procgen's time limit can fall on the coin's step: recorded as truncated, still the episode's end
    timeout_coin = np.array([0, 1, 0, 0, 1], bool)
    assert reward_ends_episode_in(np.array([0, 10, 10, 0, 0]), coinrun_terms, timeout_coin) is True
    assert reward_ends_episode_in([0, 10, 10, 0, 0], coinrun_terms) is False
    with pytest.raises(ValueError, match="needs mode='sign'"):
        RewardConfig(mode="twohot", reward_ends_episode=True, **SMALL)
    cfg = RewardConfig(sign_values=(-1.0, 0.0, 10.0), reward_ends_episode=True, **SMALL)
    assert RewardConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).reward_ends_episode is True
    head = RewardHead(cfg)
    ctx, act, nxt = _inputs(cfg, 4)
    with torch.no_grad():
        head.reward_out.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))  # every transition pays
        head.termination_out.weight.zero_()
        head.termination_out.bias.fill_(-20.0)  # and the termination output says "goes on"
    for sample in (False, True):
        reward, terminated = head.predict(ctx, act, nxt, sample=sample, generator=torch.Generator().manual_seed(0))
        assert reward.tolist() == [10.0] * 4 and terminated.all()
    reloaded = load_reward_head(save_reward_head(head, tmp_path / "r.safetensors"))
    assert reloaded.config.reward_ends_episode and reloaded.predict(ctx, act, nxt)[1].all()
    head.config.reward_ends_episode = False  # the rule off: the termination output decides
    assert not head.predict(ctx, act, nxt)[1].any()
    with pytest.raises(ValueError, match="reward_ends_episode"):
        RewardConfig(reward_ends_episode="yes", **SMALL)


# --------------------------------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------------------------------


def _toy_sample(n: int, rng: np.random.Generator, k: int = 2, size: int = 32) -> dict[str, np.ndarray]:
    """Toy transitions: a white block in the next frame pays +1; an all-black next frame ends the episode.

    Returned frame-stacked like a TransitionDataset(frame_stack=k): ``next_obs`` is (n, k, H, W, 3).
    """
    obs = rng.integers(0, 80, size=(n, k + 1, size, size, 3), dtype=np.uint8)
    kind = rng.choice(3, size=n, p=[0.6, 0.2, 0.2])  # 0 plain, 1 white block (+1), 2 black frame (game over)
    reward = np.zeros(n, np.float32)
    for i in np.flatnonzero(kind == 1):
        y, x = rng.integers(0, size - 6, size=2)
        obs[i, -1, y:y + 6, x:x + 6] = 255
        reward[i] = 1.0
    obs[kind == 2, -1] = 0
    return {"obs": obs[:, :k], "action": rng.integers(0, 4, size=n), "reward": reward,
            "terminated": kind == 2, "next_obs": obs[:, 1:]}


def test_tiny_overfit_white_block_reward_and_black_frame_termination() -> None:
    torch.manual_seed(0)
    head = RewardHead(RewardConfig(**SMALL))
    history = fit_reward_head(head, _toy_sample, steps=150, batch_size=32, lr=3e-3,
                              generator=np.random.default_rng(0), progress=False, log_every=10)
    assert history[-1]["step"] == 149 and history[-1]["loss"] < history[0]["loss"]
    test = _toy_sample(400, np.random.default_rng(123))
    reward, term = head.predict(test["obs"], test["action"], test["next_obs"][:, -1])
    reward_acc = (reward.numpy() == test["reward"]).mean()
    term_acc = (term.numpy() == test["terminated"]).mean()
    pos = test["reward"] > 0
    assert reward_acc >= 0.95, (reward_acc, history[-1])
    assert (reward.numpy()[pos] == 1.0).mean() >= 0.9  # the rare class is found, not just the majority
    assert term_acc >= 0.97 and term.numpy()[test["terminated"]].mean() >= 0.95, (term_acc, history[-1])


def test_twohot_head_learns_reward_magnitude() -> None:
    """Two-hot mode recovers an unclipped reward (5 for the white block) through the symlog bins."""

    def sample(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        batch = _toy_sample(n, rng)
        batch["reward"] = batch["reward"] * 5.0
        return batch

    torch.manual_seed(1)
    head = RewardHead(RewardConfig(mode="twohot", **SMALL))
    fit_reward_head(head, sample, steps=150, batch_size=32, lr=3e-3, generator=np.random.default_rng(1),
                    progress=False)
    test = sample(300, np.random.default_rng(321))
    reward, term = head.predict(test["obs"], test["action"], test["next_obs"][:, -1])
    err = np.abs(reward.numpy() - test["reward"])
    assert (err < 0.25).mean() >= 0.95, err.mean()
    assert np.median(err[test["reward"] > 0]) < 0.25
    assert (term.numpy() == test["terminated"]).mean() >= 0.97


def _store_with_rare_events(tmp_path, rare: bool = True):
    """A real store of 3 episodes of 50 steps with 2 rewarded steps and one game over each (none if not rare)."""
    store = TrajectoryStore(tmp_path / "store", create=True)
    rng = np.random.default_rng(0)
    for e in range(3):
        T = 50
        rewards = np.zeros(T, np.float32)
        term = np.zeros(T, bool)
        if rare:
            rewards[[10, 30]] = [1.0, -1.0] if e == 0 else [1.0, 4.0]
            term[-1] = True
        obs = rng.integers(0, 255, size=(T + 1, 8, 8, 3), dtype=np.uint8)
        trunc = ~term & (np.arange(T) == T - 1)  # an episode without a game over ends by truncation
        store.add_episode(obs, rng.integers(0, 4, size=T), rewards, term, trunc, env_id="Test-v0",
                          action_space={"type": "discrete", "n": 4})
    return store.transitions(frame_stack=2)


def test_rare_event_sampler_fills_its_share_with_rare_transitions(tmp_path):
    data = _store_with_rare_events(tmp_path)
    sampler = RareEventSampler(data, rare_fraction=0.25)
    assert len(sampler.rare_indices) == 9 and sampler.rare_count(64) == 16
    batch = sampler(64, np.random.default_rng(1))
    rare = (batch["reward"] != 0) | batch["terminated"]
    assert rare[:16].all() and batch["obs"].shape == (64, 2, 8, 8, 3)
    assert rare.mean() < 0.5  # the other 48 are uniform draws (9 of 150 transitions are rare)
    again = sampler(64, np.random.default_rng(1))
    assert all(np.array_equal(batch[k], again[k]) for k in batch)


def test_rare_event_sampler_without_rare_events_or_share_draws_uniformly(tmp_path):
    data = _store_with_rare_events(tmp_path)
    assert RareEventSampler(data, rare_fraction=0.0).rare_count(64) == 0
    plain = RareEventSampler(_store_with_rare_events(tmp_path / "plain", rare=False), rare_fraction=0.5)
    assert len(plain.rare_indices) == 0 and plain.rare_count(64) == 0
    assert plain(8, np.random.default_rng(0))["reward"].shape == (8,)
    rng = np.random.default_rng(2)
    idx = RareEventSampler(data, rare_fraction=0.0).indices(1000, rng)
    assert idx.min() >= 0 and idx.max() < len(data) and len(np.unique(idx)) > 100
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="rare_fraction"):
            RareEventSampler(data, rare_fraction=bad)


def test_reward_head_batches_picks_one_remedy_for_rare_events(tmp_path):
    data = _store_with_rare_events(tmp_path)
    sample_fn, class_w, pos_w = reward_head_batches(data, 0.25)
    assert isinstance(sample_fn, RareEventSampler) and sample_fn.rare_fraction == 0.25
    assert class_w == [1.0, 1.0, 1.0] and pos_w == 1.0  # oversampling alone: no weights on top
    sample_fn, class_w, pos_w = reward_head_batches(data, 0.0)
    records = data.step_records()
    assert sample_fn == data.sample
    assert (class_w, pos_w) == balance_weights_from_data(records["reward"], records["terminated"])
    assert max(class_w) > 1.0 and pos_w > 1.0  # rare classes weighted up
    with pytest.raises(ValueError, match="rare_fraction"):
        reward_head_batches(data, float("nan"))


def _tiny_unet(context: int = 2, seed: int = 0) -> UNetWorldModel:
    """An 8x8 pixel U-Net pushed off its residual start, so its dreamed frames differ from the real ones."""
    torch.manual_seed(seed)
    model = UNetWorldModel(UNetConfig(widths=(8, 16, 16), groups=4, cond_dim=8, cond_hidden_dim=16,
                                      context_frames=context, frame_size=8, num_actions=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _dreamed(clips, seed: int = 0, **kw) -> DreamedTransitions:
    return DreamedTransitions(_tiny_unet(), clips, 12, np.random.default_rng(seed),
                              generator=torch.Generator().manual_seed(seed), progress=False, **kw)


def test_dreamed_transitions_carry_the_real_labels_of_the_steps_they_dream(tmp_path):
    _store_with_rare_events(tmp_path)
    store = TrajectoryStore(tmp_path / "store")
    clips = store.clips(2, 3)
    data = _dreamed(clips)
    k, horizon = 2, 3
    real = clips.get_batch(data.windows)
    rec = clips.step_records(data.windows)
    batch = data.get_batch(np.arange(len(data)))
    w, h = np.nonzero(rec["mask"][:, k:])  # every dreamed step whose real frame exists, in window order
    assert len(data) == len(w) and batch["obs"].shape == (len(w), k, 8, 8, 3)
    np.testing.assert_array_equal(batch["dream_step"], h + 1)
    for key, rkey in (("reward", "rewards"), ("terminated", "terminated"), ("action", "actions")):
        np.testing.assert_array_equal(batch[key], rec[rkey][w, k - 1 + h])  # step K-1+h leads to frame K+h
    first = h == 0  # the first dreamed frame conditions on real frames only
    np.testing.assert_array_equal(batch["obs"][first], real["frames"][w[first], :k])
    later = h == horizon - 1  # the last one on dreamed frames, which are not the real ones
    np.testing.assert_array_equal(batch["obs"][later][:, -1], data.frames[w[later], k + horizon - 2])
    assert (data.frames[:, k:] != real["frames"][:, k:]).any()
    # Half the windows were drawn among those with a reward or a game over in their dreamed steps.
    rare_windows = ((rec["rewards"][:, k - 1:] != 0) | rec["terminated"][:, k - 1:]).any(axis=1)
    assert rare_windows.sum() >= 6
    again = _dreamed(clips)
    np.testing.assert_array_equal(again.frames, data.frames)  # the generators alone decide the dream
    records = data.step_records()
    np.testing.assert_array_equal(records["reward"], batch["reward"])
    assert len(RareEventSampler(data, 0.5).rare_indices) == int(((batch["reward"] != 0) | batch["terminated"]).sum())


class _RecordingModel:
    """A world model that remembers the action each ``sample_next`` call was asked to take."""

    def __init__(self, model: UNetWorldModel) -> None:
        self.model, self.config, self.device = model, model.config, model.device
        self.calls: list[np.ndarray] = []

    def sample_next(self, frames, actions, action, generator=None):
        self.calls.append(action.cpu().numpy().copy())
        return self.model.sample_next(frames, actions, action, generator=generator)


def test_dreamed_transitions_keep_the_frameless_final_step_of_procgen_episodes(tmp_path):
    """Procgen loses an episode's final frame, and CoinRun pays its coin on exactly that step: the reward head's
    dreamed data must still hold it (the dream renders a frame for it under the real action), labelled with the
    real reward. Episodes with a final frame keep their steps as before."""
    store = TrajectoryStore(tmp_path / "store", create=True)
    rng = np.random.default_rng(0)
    T, k, horizon = 6, 2, 3
    for e in range(5):
        known = e == 4  # one Atari-style episode among the Procgen ones
        rewards = np.zeros(T, np.float32)
        rewards[-1] = 10.0  # the coin: the step that ends the level
        term = np.zeros(T, bool)
        term[-1] = True
        store.add_episode(rng.integers(0, 255, size=(T + known, 8, 8, 3), dtype=np.uint8),
                          rng.integers(1, 4, size=T), rewards, term, np.zeros(T, bool), env_id="Test-v0",
                          final_frame_known=known, action_space={"type": "discrete", "n": 4})
    clips = store.clips(k, horizon)
    ids, starts = clips.locate(np.arange(len(clips)))
    assert (clips.step_records()["rewards"][ids != 4] == 0).all()  # training windows zero the frameless step ...
    rec = clips.step_records(frameless_final=True)
    frameless = ids != 4
    # ... the option keeps it, at position T - 1 - start, in each window that reaches it (start >= T - L + 1)
    reach = frameless & (starts >= T - (k + horizon) + 1)
    assert reach.sum() == 4 * 2
    assert (rec["rewards"][reach, T - 1 - starts[reach]] == 10.0).all() and rec["rewards"][frameless].sum() == 80.0
    assert (rec["step_mask"][~frameless] == rec["mask"][~frameless, 1:]).all()  # a known final frame: as before
    for key in ("rewards", "actions", "terminated"):
        np.testing.assert_array_equal(rec[key][~frameless], clips.step_records()[key][~frameless])
    model = _RecordingModel(_tiny_unet())
    data = DreamedTransitions(model, clips, 40, np.random.default_rng(0), rare_window_fraction=0.0,
                              generator=torch.Generator().manual_seed(0), progress=False)
    batch = data.get_batch(np.arange(len(data)))
    assert len(data) == int(rec["step_mask"][data.windows][:, k - 1:].sum())  # dreamed steps K-1.. of each window
    paid = batch["reward"] == 10.0
    assert paid.any() and (batch["terminated"] == paid).all()
    # The world model took each episode's real last action for the frameless step (not the zero of the windows).
    fed = np.stack(model.calls, axis=1)  # one batch of windows: (windows, horizon)
    assert fed.shape == (len(data.windows), horizon)
    w_ids, w_starts = clips.locate(data.windows)
    for i, (e, st) in enumerate(zip(w_ids, w_starts)):
        h = T - 1 - st - (k - 1)  # dreamed step index of the episode's last step
        if 0 <= h < horizon:
            assert fed[i, h] == store.steps(int(e))["actions"][-1]


def test_dreamed_transitions_reject_a_mismatched_model_or_bad_sizes(tmp_path):
    _store_with_rare_events(tmp_path)
    store = TrajectoryStore(tmp_path / "store")
    with pytest.raises(ValueError, match="ClipDataset with context=2"):
        DreamedTransitions(_tiny_unet(context=2), store.clips(3, 2), 4, np.random.default_rng(0), progress=False)
    for kw, msg in (({"num_windows": 0}, "num_windows"), ({"rare_window_fraction": 1.5}, "rare_window_fraction")):
        args = {"num_windows": 4, **kw}
        with pytest.raises(ValueError, match=msg):
            DreamedTransitions(_tiny_unet(), store.clips(2, 2), args.pop("num_windows"), np.random.default_rng(0),
                               progress=False, **args)


def test_mixed_batches_put_the_share_last_and_match_next_frames(tmp_path):
    real = _store_with_rare_events(tmp_path)  # frame-stacked: next_obs (n, 2, 8, 8, 3)
    dreamed = _dreamed(TrajectoryStore(tmp_path / "store").clips(2, 3))
    sample = mixed_batches(real.sample, dreamed.sample, 0.25)
    batch = sample(8, np.random.default_rng(0))
    assert batch["next_obs"].shape == (8, 8, 8, 3) and batch["obs"].shape == (8, 2, 8, 8, 3)
    assert {"obs", "action", "reward", "terminated", "next_obs"} <= set(batch) and "dream_step" not in batch
    rng = np.random.default_rng(0)  # the real part is drawn first, then the dreamed share
    head_part = real.sample(6, rng)
    np.testing.assert_array_equal(batch["next_obs"][:6], head_part["next_obs"][:, -1])
    np.testing.assert_array_equal(batch["next_obs"][6:], dreamed.sample(2, rng)["next_obs"])
    assert mixed_batches(real.sample, dreamed.sample, 1.0)(4, np.random.default_rng(1))["next_obs"].shape[0] == 4
    assert mixed_batches(real.sample, dreamed.sample, 0.0)(4, np.random.default_rng(1))["next_obs"].ndim == 5
    with pytest.raises(ValueError, match="second_share"):
        mixed_batches(real.sample, dreamed.sample, float("nan"))
    head = RewardHead(RewardConfig(context_frames=2, frame_shape=(8, 8, 3), num_actions=4, dim=16, depth=1,
                                   num_heads=2))
    logs = fit_reward_head(head, sample, steps=2, batch_size=8, generator=np.random.default_rng(0), progress=False)
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)


def test_prior_correction_undoes_the_oversampled_prior():
    import math

    from dws_gym.models.reward_training import prior_correction

    reward = np.zeros(100, dtype=np.float32)
    reward[:2] = 1.0  # 2% rewarded steps
    term = np.zeros(100, dtype=bool)
    term[50] = True  # 1% game overs (rare set: 3 transitions)
    offsets, t_off = prior_correction({"reward": reward, "terminated": term}, 0.15)
    train_pos = 0.15 * 2 / 3 + 0.85 * 0.02  # the sampler's share of rewarded transitions
    assert offsets[2] == pytest.approx(math.log(0.02 / train_pos))
    assert offsets[0] == 0.0  # no negative rewards in the data: nothing to correct
    train_term = 0.15 * 1 / 3 + 0.85 * 0.01

    def logit(p):
        return math.log(p / (1 - p))

    assert t_off == pytest.approx(logit(0.01) - logit(train_term))
    assert prior_correction({"reward": reward, "terminated": term}, 0.0) == ((0.0, 0.0, 0.0), 0.0)


def test_prior_correction_with_dreamed_batches_uses_the_mixed_prior():
    import math

    from dws_gym.models.reward_training import prior_correction

    reward = np.zeros(100, dtype=np.float32)
    reward[:2] = 1.0
    term = np.zeros(100, dtype=bool)
    term[50] = True
    real = {"reward": reward, "terminated": term}
    d_reward = np.zeros(40, dtype=np.float32)
    d_reward[:4] = 1.0  # dreamed windows are drawn around events: 10% rewarded, 5% game overs
    d_term = np.zeros(40, dtype=bool)
    d_term[[10, 11]] = True
    dreamed = {"reward": d_reward, "terminated": d_term}
    offsets, t_off = prior_correction(real, 0.15, dreamed, 0.5)
    real_pos, dream_pos = 0.15 * 2 / 3 + 0.85 * 0.02, 0.15 * 4 / 6 + 0.85 * 0.1
    assert offsets[2] == pytest.approx(math.log(0.02 / (0.5 * real_pos + 0.5 * dream_pos)))  # p_data: real only

    def logit(p):
        return math.log(p / (1 - p))

    real_term, dream_term = 0.15 * 1 / 3 + 0.85 * 0.01, 0.15 * 2 / 6 + 0.85 * 0.05
    assert t_off == pytest.approx(logit(0.01) - logit(0.5 * real_term + 0.5 * dream_term))
    assert t_off < prior_correction(real, 0.15)[1]  # the richer dreamed half calls for a larger correction
    assert prior_correction(real, 0.15, dreamed, 0.0) == prior_correction(real, 0.15)
    with pytest.raises(ValueError, match="dreamed="):
        prior_correction(real, 0.15, None, 0.5)
    with pytest.raises(ValueError, match="dream_share"):
        prior_correction(real, 0.15, dreamed, 1.0)


def test_logit_offsets_change_predictions_and_survive_save_load(tmp_path):
    from dws_gym.models.reward import RewardConfig, RewardHead, load_reward_head, save_reward_head

    torch.manual_seed(0)
    head = RewardHead(RewardConfig(context_frames=2, num_actions=4, dim=16, depth=1, num_heads=2)).eval()
    ctx = torch.randint(0, 256, (8, 2, 64, 64, 3), dtype=torch.uint8)
    nxt = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
    act = torch.randint(0, 4, (8,))
    head.config.reward_logit_offset = (0.0, 0.0, 50.0)  # every transition becomes a positive reward
    head.config.termination_logit_offset = -50.0  # and none terminates
    reward, term = head.predict(ctx, act, nxt)
    assert torch.all(reward == 1.0) and not term.any()
    again = load_reward_head(save_reward_head(head, tmp_path / "head.safetensors"))
    assert again.config.reward_logit_offset == (0.0, 0.0, 50.0) and again.config.termination_logit_offset == -50.0
    with pytest.raises(ValueError, match="reward_logit_offset must be 3 finite floats"):
        RewardConfig(num_actions=4, reward_logit_offset=(0.0, 1.0))


class _View:
    """A transition view over one fixed batch (``len``, ``get_batch``, ``step_records``), as calibration reads it."""

    def __init__(self, batch: dict[str, np.ndarray]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["reward"])

    def get_batch(self, idx) -> dict[str, np.ndarray]:
        return {key: v[np.asarray(idx)] for key, v in self.batch.items()}

    def step_records(self) -> dict[str, np.ndarray]:
        return {"reward": self.batch["reward"], "terminated": self.batch["terminated"]}


def test_calibration_makes_the_head_pay_at_the_real_rate():
    from dws_gym.models.reward_training import calibrate_reward_rate, reward_margins

    torch.manual_seed(0)
    head = RewardHead(RewardConfig(**SMALL))
    fit_reward_head(head, _toy_sample, steps=150, batch_size=32, lr=3e-3, generator=np.random.default_rng(0),
                    progress=False)
    view = _View(_toy_sample(300, np.random.default_rng(7)))
    real = int((view.batch["reward"] != 0).sum())
    head.config.reward_logit_offset = (-100.0, 0.0, 0.0)  # the toy has no -1 rewards
    spread = float(np.abs(reward_margins(head, view)[0]).max()) + 1.0
    for push in (spread, -spread):  # a head that pays on every transition, then one that pays on none
        head.config.reward_logit_offset = (-100.0, max(-push, 0.0), max(push, 0.0))
        cal = calibrate_reward_rate(head, view, batch_size=64)
        assert cal.paid_before == (300 if push > 0 else 0)
        assert cal.real_paid == real and cal.paid_after == real and cal.transitions == 300
        assert (cal.shift > 0) == (push > 0)
        assert head.config.reward_logit_offset[1] == pytest.approx(max(-push, 0.0) + cal.shift)  # where predict reads
        reward, _ = head.predict(view.batch["obs"], view.batch["action"], view.batch["next_obs"][:, -1])
        paid = reward.numpy() != 0
        assert paid.sum() == real  # the calibrated head pays as often as the real game did
        hits = int((paid & (reward.numpy() == view.batch["reward"])).sum())
        assert cal.hits_after == hits >= 0.5 * real  # the head ranks the white blocks first
        assert cal.precision == pytest.approx(cal.recall) == pytest.approx(hits / real)
        margins, signs = reward_margins(head, view)
        assert ((margins > 0) == paid).all() and set(np.unique(signs)) <= {-1.0, 1.0}
    assert "pays on" in cal.describe() and "real: " in cal.describe()


def test_calibration_rejects_what_it_cannot_match():
    from dws_gym.models.reward_training import calibrate_reward_rate

    batch = _toy_sample(20, np.random.default_rng(3))
    quiet = dict(batch, reward=np.zeros(20, np.float32))
    with pytest.raises(ValueError, match="has a reward"):
        calibrate_reward_rate(RewardHead(RewardConfig(**SMALL)), _View(quiet))
    with pytest.raises(ValueError, match="sign-mode head"):
        calibrate_reward_rate(RewardHead(RewardConfig(mode="twohot", **SMALL)), _View(batch))
