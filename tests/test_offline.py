"""Offline RL: the losses on hand-computed examples, the replay over real + synthetic stores, the synthesizer
(exact size, metadata, kill and resume) and smoke runs of offline/cql.py, offline/iql.py and offline/table2.py."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dws_gym.agents import ActorCritic, PolicyConfig, RandomPolicy, load_policy, save_policy
from dws_gym.data import TrajectoryStore
from dws_gym.imagination import StoreStartSampler
from dws_gym.offline import (
    OfflineReplay,
    awr_policy_loss,
    cql_loss,
    double_dqn_target,
    expectile_loss,
    iql_q_target,
    synthesize,
)
from dws_gym.policy_eval import PROCGEN_LEVELS, evaluate_on_levels, level_ranges
from tiny_sim import BREAKOUT, make_tiny_sim

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _add(store: TrajectoryStore, rng: np.random.Generator, length: int, *, env_id: str = "ALE/Breakout-v5",
         final_known: bool = True, terminated: bool = True, **kw) -> int:
    frames = rng.integers(0, 256, size=(length + int(final_known), 64, 64, 3), dtype=np.uint8)
    rewards = np.zeros(length, np.float32)
    rewards[-1] = 1.0
    term = np.zeros(length, bool)
    term[-1] = terminated
    return store.add_episode(frames, rng.integers(0, 4, size=length), rewards, term, np.zeros(length, bool),
                             env_id=env_id, action_meanings=BREAKOUT, final_frame_known=final_known, **kw)


@pytest.fixture()
def real_store(tmp_path):
    store = TrajectoryStore(tmp_path / "real", create=True)
    rng = np.random.default_rng(0)
    for length in (12, 9, 15):
        _add(store, rng, length)
    return store


# ---------------------------------------------------------------------------------------------------------- losses
def test_cql_loss_is_huber_td_plus_alpha_times_logsumexp_gap():
    q = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    actions = torch.tensor([0, 2])
    target = torch.tensor([1.0, 3.0])  # TD errors 0 and 3: Huber 0 and 2.5
    loss, logs = cql_loss(q, actions, target, alpha=4.0)
    gap = ((math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 1.0) + (math.log(3.0) - 0.0)) / 2
    assert logs["td_loss"].item() == pytest.approx((0.0 + 2.5) / 2)
    assert logs["cql_term"].item() == pytest.approx(gap, rel=1e-6)
    assert loss.item() == pytest.approx(1.25 + 4.0 * gap, rel=1e-6)


def test_double_dqn_target_takes_the_online_argmax_valued_by_the_target_net():
    online = torch.tensor([[1.0, 5.0], [7.0, 0.0]])
    target_net = torch.tensor([[10.0, 2.0], [3.0, 9.0]])
    target = double_dqn_target(online, target_net, torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]), gamma=0.5)
    assert target.tolist() == [1.0 + 0.5 * 2.0, 1.0]  # row 0: action 1 valued 2 by the target; row 1: terminal


def test_expectile_loss_weights_under_estimates_by_the_expectile():
    assert expectile_loss(torch.tensor([2.0, -2.0]), 0.8).item() == pytest.approx((0.8 * 4 + 0.2 * 4) / 2)
    assert expectile_loss(torch.tensor([1.0]), 0.8).item() == pytest.approx(0.8)
    assert expectile_loss(torch.tensor([-1.0]), 0.8).item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="expectile must lie in"):
        expectile_loss(torch.tensor([1.0]), 1.0)


def test_iql_q_target_and_advantage_weighted_cloning():
    assert iql_q_target(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([4.0, 4.0]),
                        0.9).tolist() == pytest.approx([1.0 + 0.9 * 4.0, 2.0])
    log_prob = torch.tensor([-1.0, -2.0], requires_grad=True)
    advantage = torch.tensor([0.0, math.log(2.0) / 3.0])  # weights exp(3 A) = 1 and 2
    loss = awr_policy_loss(log_prob, advantage, temperature=3.0)
    assert loss.item() == pytest.approx(-(1.0 * -1.0 + 2.0 * -2.0) / 2)
    loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([-0.5, -1.0])
    capped = awr_policy_loss(torch.tensor([-1.0]), torch.tensor([10.0]), temperature=3.0, max_weight=100.0)
    assert capped.item() == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------------------- replay
def test_replay_mixes_stores_at_the_fraction_and_ends_procgen_episodes(tmp_path, real_store):
    syn = TrajectoryStore(tmp_path / "syn", create=True)
    rng = np.random.default_rng(1)
    for _ in range(3):
        _add(syn, rng, 6, synthetic=True, source_simulator="sim", terminated=False)
    replay = OfflineReplay(real_store, syn, synthetic_fraction=0.25, frame_stack=2)
    batch = replay.sample(8, np.random.default_rng(0))
    assert batch["obs"].shape == (8, 2, 64, 64, 3) and batch["next_obs"].shape == (8, 2, 64, 64, 3)
    assert batch["synthetic"].tolist() == [False] * 6 + [True] * 2
    assert len(replay) == 36 + 18
    assert OfflineReplay(real_store, syn).synthetic_fraction == pytest.approx(18 / 54)  # uniform over the union

    # a Procgen-style episode whose final frame is lost: its last (rewarded) step is a terminal transition
    lost = TrajectoryStore(tmp_path / "lost", create=True)
    _add(lost, rng, 5, final_known=False, terminated=False)
    replay = OfflineReplay(lost)
    batch = replay.real.get_batch(np.arange(len(replay.real)))
    assert len(replay.real) == 5 and batch["reward"][-1] == 1.0
    done = replay.sample(200, np.random.default_rng(0))
    assert done["done"][done["reward"] == 1.0].all() and not done["done"][done["reward"] == 0.0].any()
    assert replay.left_out == 0

    # a time-limit end whose final frame is lost cannot be bootstrapped: it is never drawn
    timeout = TrajectoryStore(tmp_path / "timeout", create=True)
    trunc = np.zeros(4, bool)
    trunc[-1] = True
    timeout.add_episode(rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8), rng.integers(0, 4, size=4),
                        np.zeros(4, np.float32), np.zeros(4, bool), trunc, env_id="ALE/Breakout-v5",
                        action_meanings=BREAKOUT, final_frame_known=False)
    _add(timeout, rng, 5)
    replay = OfflineReplay(timeout)
    assert len(replay.real) == 9 and replay.left_out == 1
    real_ids, _ = replay.draw(500, np.random.default_rng(0))
    assert 3 not in set(real_ids.tolist()) and {0, 1, 2} <= set(real_ids.tolist())  # the first episode's last step
    batch = replay.sample(64, np.random.default_rng(1))
    assert batch["done"].tolist() == (batch["reward"] == 1.0).tolist()  # only the game's real end is terminal


def test_replay_refuses_mismatched_or_unmarked_synthetic_stores(tmp_path, real_store):
    rng = np.random.default_rng(2)
    other = TrajectoryStore(tmp_path / "other", create=True)
    _add(other, rng, 5, env_id="ALE/Pong-v5", synthetic=True)
    with pytest.raises(ValueError, match="env id ALE/Pong-v5 vs ALE/Breakout-v5"):
        OfflineReplay(real_store, other)
    unmarked = TrajectoryStore(tmp_path / "unmarked", create=True)
    _add(unmarked, rng, 5)
    with pytest.raises(ValueError, match="not marked synthetic"):
        OfflineReplay(real_store, unmarked)
    mixed = TrajectoryStore(tmp_path / "mixed", create=True)
    for synthetic in (False, True, False, True, False):
        _add(mixed, rng, 5, synthetic=synthetic)
    with pytest.raises(ValueError, match="holds 2 episodes marked synthetic"):  # nor dreams counted as real data
        OfflineReplay(mixed)
    with pytest.raises(ValueError, match="needs a synthetic store"):
        OfflineReplay(real_store, synthetic_fraction=0.5)
    with pytest.raises(ValueError, match="holds no episode"):
        OfflineReplay(TrajectoryStore(tmp_path / "empty", create=True))


# ---------------------------------------------------------------------------------------------------------- starts
def test_store_start_sampler_draws_real_windows_of_k_frames(real_store):
    sampler = StoreStartSampler(real_store, 3)
    # starts with K frames inside the episode, but none ending on the frame after the terminal step
    assert len(sampler) == (12 + 1 - 2) + (9 + 1 - 2) + (15 + 1 - 2) - 3
    every_eps, every_first = sampler.locate(np.arange(len(sampler)))
    lengths = {i: real_store.meta(i).length for i in real_store.episode_ids()}
    assert all(first + 3 <= lengths[int(ep)] for ep, first in zip(every_eps, every_first))
    frames, actions, ids = sampler.sample(5, np.random.default_rng(0))
    assert frames.shape == (5, 3, 64, 64, 3) and actions.shape == (5, 2) and actions.dtype == np.int64
    eps, first = sampler.locate(ids)
    for i in range(5):
        episode = real_store.episode(int(eps[i]))
        np.testing.assert_array_equal(frames[i], episode["obs"][first[i]:first[i] + 3])
        np.testing.assert_array_equal(actions[i], episode["actions"][first[i]:first[i] + 2])
    with pytest.raises(ValueError, match="no episode holds 20 frames before its end"):
        StoreStartSampler(real_store, 20)


# ---------------------------------------------------------------------------------------------------------- synthesis
def test_synthesize_writes_exactly_n_marked_transitions_and_continues(tmp_path, real_store):
    sim = make_tiny_sim(0)
    out = tmp_path / "syn"
    first = synthesize(real_store.root, out, 30, simulator=sim, num_envs=3, horizon=4, epsilon=0.5, progress=False)
    store = TrajectoryStore(out)
    assert first.transitions == 30 and store.num_steps == 30 and first.total == 30
    for ep_id in store.episode_ids():
        meta = store.meta(ep_id)
        assert meta.synthetic and meta.source_simulator == "Simulator(ALE/Breakout-v5)"
        assert meta.policy == "random+epsilon:0.5" and meta.length <= 4
        start = real_store.episode(meta.extra["start_episode"])["obs"]
        # every dream begins with the last frame of its real start window
        np.testing.assert_array_equal(store.obs(ep_id)[0], start[meta.extra["start_frame"] + 2])
    second = synthesize(real_store.root, out, 50, simulator=sim, num_envs=3, horizon=4, epsilon=0.5, progress=False)
    store.refresh()
    assert second.transitions == 20 and store.num_steps == 50 and second.seed != first.seed
    assert synthesize(real_store.root, out, 50, simulator=sim, num_envs=3, horizon=4, epsilon=0.5,
                      progress=False).transitions == 0
    with pytest.raises(ValueError, match="already holds transitions of simulator"):
        synthesize(real_store.root, out, 60, simulator=sim, num_envs=3, horizon=4, progress=False)
    with pytest.raises(ValueError, match="holds real episodes"):
        synthesize(real_store.root, real_store.root, 60, simulator=sim, progress=False)
    pong = make_tiny_sim(0, env_id="ALE/Pong-v5")
    with pytest.raises(ValueError, match="use a simulator of the dataset's game"):
        synthesize(real_store.root, tmp_path / "pong", 10, simulator=pong, progress=False)


def _episode_digest(store: TrajectoryStore, ep_id: int) -> str:
    episode = store.episode(ep_id)
    return hashlib.sha256(episode["obs"].tobytes() + episode["actions"].tobytes()).hexdigest()


def test_augment_killed_mid_run_and_resumed_writes_exactly_n_unique_transitions(tmp_path, real_store):
    sim_path = tmp_path / "sim"
    make_tiny_sim(0).save_pretrained(sim_path)
    out, n = tmp_path / "syn", 400
    cmd = [sys.executable, str(ROOT / "offline" / "augment.py"), "--dataset", str(real_store.root), "--out", str(out),
           "--transitions", str(n), "--simulator", str(sim_path), "--num-envs", "2", "--horizon", "3",
           "--no-progress", "--dtype", "fp32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    episodes = out / "episodes"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (episodes.is_dir() and len(os.listdir(episodes)) >= 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = TrajectoryStore(out).num_steps
    assert 0 < before < n, proc.stderr.read().decode()[-3000:]

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"holds {n} of {n}" in done.stdout
    store = TrajectoryStore(out)
    assert store.num_steps == n
    digests = [_episode_digest(store, i) for i in store.episode_ids()]
    assert len(set(digests)) == len(digests)  # the resumed run drew fresh seeds: no episode written twice


# ---------------------------------------------------------------------------------------------------------- evaluation
def test_data_levels_read_the_collected_level_range_and_mode(tmp_path):
    from dws_gym.offline.runner import data_levels

    rng = np.random.default_rng(4)

    def store(name, *levels, synthetic_levels=None):
        st = TrajectoryStore(tmp_path / name, create=True)
        for lv in levels:
            _add(st, rng, 3, extra={} if lv is None else {"levels": lv})
        if synthetic_levels is not None:  # dreams record no levels of their own: not counted
            _add(st, rng, 3, synthetic=True)
        return st

    train = {"start_level": 0, "num_levels": 200, "distribution_mode": "easy"}
    assert data_levels(store("train", train, train, synthetic_levels=True)) == ("easy", True)
    assert data_levels(store("hard", {**train, "distribution_mode": "hard"})) == ("hard", True)
    assert data_levels(store("every", train, {**train, "num_levels": 0})) == ("easy", False)  # every level
    assert data_levels(store("high", {"start_level": 200, "num_levels": 100})) == ("easy", False)  # 250-299 seen
    assert data_levels(store("unknown", None)) == ("easy", False)  # unrecorded: not known to be unseen


def test_procgen_evaluation_uses_the_named_level_ranges(monkeypatch):
    import dws_gym.policy_eval as policy_eval

    assert level_ranges("procgen/coinrun") == PROCGEN_LEVELS
    assert PROCGEN_LEVELS == {"train": {"start_level": 0, "num_levels": 200},
                              "test": {"start_level": 250, "num_levels": 2_000_000_000}}
    assert level_ranges("ALE/Breakout-v5") == {"real": {}}
    made = []
    real_make = policy_eval.make_real_env

    def recording_make(env_id, num_envs, **kwargs):
        made.append(kwargs)
        return real_make(env_id, num_envs, **kwargs)

    monkeypatch.setattr(policy_eval, "make_real_env", recording_make)
    result = evaluate_on_levels(RandomPolicy(15, seed=0), "procgen/coinrun", 1, max_steps=5)
    assert set(result) == {"train", "test"} and all(r["episodes"] == 1 for r in result.values())
    assert [(m["start_level"], m["num_levels"]) for m in made] == [(0, 200), (250, 2_000_000_000)]


def test_procgen_level_ranges_hold_the_levels_they_name():
    """Procgen ignores start_level when num_levels is 0: the test range must be a finite range from 250."""
    from dws_gym.envs.real import make_real_env
    from dws_gym.policy_eval import describe_levels

    for name, (low, high) in {"train": (0, 199), "test": (250, 2_000_000_249)}.items():
        envs = make_real_env("procgen/coinrun", 32, **PROCGEN_LEVELS[name])
        try:
            _, info = envs.reset(seed=0)
            seeds = np.asarray(info["level_seed"])
        finally:
            envs.close()
        assert ((seeds >= low) & (seeds <= high)).all(), (name, seeds)
    result = {"train": {"return": 1.0, "return_std": 0.0, "episodes": 2},
              "test": {"return": 2.0, "return_std": 0.0, "episodes": 2}}
    assert describe_levels(result) == ("mean return 1.00 +- 0.00 on train levels 0-199 (2 episodes), "
                                       "2.00 +- 0.00 on levels >= 250 (2 episodes)")


@pytest.mark.parametrize("depth,workers", [(0, 1), (2, 1), (3, 3)])
def test_batches_read_ahead_are_samples_batches_in_order_and_resume_from_the_rng_state(real_store, tmp_path, depth,
                                                                                      workers):
    from dws_gym.data import ReadAhead

    syn = TrajectoryStore(tmp_path / "syn", create=True)
    _add(syn, np.random.default_rng(5), 6, synthetic=True, source_simulator="sim", terminated=False)
    replay = OfflineReplay(real_store, syn, synthetic_fraction=0.25)
    expected_rng = np.random.default_rng(7)
    expected = [replay.sample(8, expected_rng) for _ in range(6)]

    def reader(rng):
        return ReadAhead(lambda g: replay.draw(8, g), replay.read, rng, depth=depth, workers=workers)

    rng = np.random.default_rng(7)
    with reader(rng) as batches:
        got = [batches.next() for _ in range(3)]
        state = batches.rng_state
    resumed = np.random.default_rng()
    resumed.bit_generator.state = state  # a resumed run continues with batch 4, not with the ones read ahead
    with reader(resumed) as batches:
        got += [batches.next() for _ in range(3)]
    got.append(replay.sample(8, rng))  # closing rewound the first generator: batch 4 comes next from it too
    expected.append(expected[3])
    for i, (a, b) in enumerate(zip(expected, got)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"batch {i}, {k}")
    assert got[0]["synthetic"].sum() == 2
    with pytest.raises(ValueError, match="depth >= 0"):
        ReadAhead(lambda g: replay.draw(8, g), replay.read, rng, depth=-1)


def test_a_failed_read_surfaces_in_the_caller_and_a_closed_reader_refuses():
    from dws_gym.data import ReadAhead

    def read(i):
        if i == 1:
            raise OSError("disk gone")
        return i

    counter = iter(range(100))
    reader = ReadAhead(lambda rng: next(counter), read, np.random.default_rng(0), depth=2, workers=2)
    assert reader.next() == 0
    with pytest.raises(OSError, match="disk gone"):
        reader.next()
    assert reader.next() == 2
    reader.close()
    with pytest.raises(RuntimeError, match="closed"):
        reader.next()


# ---------------------------------------------------------------------------------------------------------- scripts
def _quadrant_store(root: Path, action: int) -> TrajectoryStore:
    """Episodes of frames lit in one quadrant, in which the data always takes ``action``."""
    store = TrajectoryStore(root, create=True)
    for quadrant in range(4):
        frames = np.zeros((9, 64, 64, 3), np.uint8)
        frames[:, 32 * (quadrant // 2):32 * (quadrant // 2 + 1), 32 * (quadrant % 2):32 * (quadrant % 2 + 1)] = 255
        store.add_episode(frames, np.full(8, action, np.int64), np.eye(1, 8, 7, dtype=np.float32)[0],
                          np.eye(1, 8, 7, dtype=bool)[0], np.zeros(8, bool), env_id="ALE/Breakout-v5",
                          action_meanings=BREAKOUT)
    return store


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("algorithm", ["iql", "cql"])
def test_gradient_steps_train_every_network_and_the_policy_follows_the_data(tmp_path, algorithm, dtype):
    """One step changes every trained network and moves the targets; a few dozen clone the data's only action (the
    advantages are small, so IQL's policy loss is behaviour cloning; CQL's conservative term favours it). In bf16
    (autocast forward passes, honoured on any CPU) the same holds, and the weights stay float32."""
    from scripts import load_script

    from dws_gym.offline.runner import start_run

    script = load_script(f"offline/{algorithm}.py", f"{algorithm}_script")
    store = _quadrant_store(tmp_path / "data", action=2)
    config = script.TrainConfig(dataset=str(store.root), output_dir=str(tmp_path / "run"), batch_size=16,
                                learning_rate=1e-3, arch="nature", eval_episodes=0, cuda=False, prefetch=0,
                                dtype=dtype)
    torch.manual_seed(0)
    run = start_run(config, algorithm)
    assert run.precision.name == dtype
    if algorithm == "iql":
        algo = script.IQL(config, run)
        trained, targets, policy = ("q1", "q2", "v", "actor"), ("q1_target", "q2_target"), algo.actor
    else:
        policy = run.network(logits="q_values")
        algo = script.CQL(policy, config, run)
        trained, targets = ("q",), ("q_target",)
    before = {name: {k: v.clone() for k, v in getattr(algo, name).state_dict().items()} for name in trained + targets}
    rng = np.random.default_rng(0)

    def batch() -> dict[str, torch.Tensor]:
        return OfflineReplay.to_torch(run.replay.read(run.replay.draw(config.batch_size, rng)), "cpu")

    algo.train(batch())
    for name in trained + targets:
        after = getattr(algo, name).state_dict()
        moved = [k for k, v in before[name].items() if v.is_floating_point() and not torch.equal(v, after[k])]
        assert any(k.startswith("trunk.") for k in moved), f"{name}: trunk unchanged by a gradient step"
        head = "critic." if name == "v" else "actor."
        assert any(k.startswith(head) for k in moved), f"{name}: {head} unchanged by a gradient step"
    for _ in range(40):
        algo.train(batch())
    obs = batch()["obs"]
    with torch.no_grad():
        logits, _ = policy(obs)
    assert (logits.argmax(1) == 2).all(), logits
    if algorithm == "iql":
        assert logits.softmax(1)[:, 2].mean() > 0.5
    assert all(p.dtype == torch.float32 for name in trained for p in getattr(algo, name).parameters())
    run.writer.close()


def test_table2_smoke_runs_all_four_arms_and_cql_resumes(tmp_path, real_store):
    syn = TrajectoryStore(tmp_path / "syn", create=True)
    rng = np.random.default_rng(3)
    for _ in range(2):
        _add(syn, rng, 5, synthetic=True, source_simulator="sim", terminated=False)
    out, results = tmp_path / "t2", tmp_path / "RESULTS.md"
    extra = "--batch-size 4 --eval-episodes 1 --eval-max-steps 20 --log-every 1 --no-cuda --arch nature"
    proc = subprocess.run([sys.executable, str(ROOT / "offline" / "table2.py"), "--dataset", str(real_store.root),
                           "--synthetic-dataset", str(syn.root), "--seeds", "1", "--total-steps", "2", "--out",
                           str(out), "--jobs", "2", "--threads", "1", f"--extra={extra}", "--write-results",
                           "--results-file", str(results)], capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    for arm in ("| CQL | 1 |", "| CQL w/ wm | 1 |", "| IQL | 1 |", "| IQL w/ wm | 1 |"):
        assert arm in text
    assert "36 / 10" in text  # real / synthetic transitions of the w/ wm arms
    assert "top action share" in text
    for folder, algorithm, synthetic in (("cql_s1", "cql", 0), ("cql-wm_s1", "cql", 10), ("iql_s1", "iql", 0),
                                         ("iql-wm_s1", "iql", 10)):
        result = json.loads((out / folder / "results.json").read_text())
        assert result["algorithm"] == algorithm and result["steps"] == 2
        assert result["synthetic_transitions"] == synthetic and result["eval"]["real"]["episodes"] == 1
        policy = load_policy(out / folder / "policy")
        assert policy.config.frame_stack == 4 and policy.config.extra["algorithm"] == algorithm
        profile = json.loads((out / folder / "action_profile.json").read_text())["profile"]
        assert profile["observations"] == 1024 and 0.25 <= profile["top_share"] <= 1.0
        assert profile["top_action"] in BREAKOUT and 1 <= profile["distinct"] <= 4

    # --resume continues the run from its checkpoint, and refuses other data
    cmd = [sys.executable, str(ROOT / "offline" / "cql.py"), "--dataset", str(real_store.root), "--output-dir",
           str(out / "cql_s1"), "--seed", "1", *extra.replace("--eval-episodes 1", "--eval-episodes 0").split()]
    more = subprocess.run([*cmd, "--total-steps", "4", "--resume"], capture_output=True, text=True, timeout=300,
                          env=_env())
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"resumed {out / 'cql_s1'} at step 2" in more.stdout
    assert json.loads((out / "cql_s1" / "results.json").read_text())["steps"] == 4
    # the minibatches read ahead (--prefetch) are not lost: 2 + 2 resumed steps give the weights of 4 in one go
    straight = [*cmd[:cmd.index("--output-dir") + 1], str(out / "straight"), *cmd[cmd.index("--output-dir") + 2:]]
    once = subprocess.run([*straight, "--total-steps", "4", "--prefetch", "0"], capture_output=True, text=True,
                          timeout=300, env=_env())
    assert once.returncode == 0, once.stderr[-3000:]
    resumed, whole = load_policy(out / "cql_s1" / "policy"), load_policy(out / "straight" / "policy")
    for (name, a), b in zip(resumed.state_dict().items(), whole.state_dict().values()):
        assert torch.equal(a, b), name
    bad = subprocess.run([*cmd, "--total-steps", "6", "--resume", "--synthetic-dataset", str(syn.root)],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert bad.returncode != 0 and "synthetic_dataset" in bad.stderr
    other_rule = subprocess.run([*cmd, "--total-steps", "6", "--resume", "--alpha", "1.0"], capture_output=True,
                                text=True, timeout=300, env=_env())  # CQL's own hyperparameter is kept too
    assert other_rule.returncode != 0 and "'alpha': (4.0, 1.0)" in other_rule.stderr


def test_action_profile_tells_a_constant_policy_from_a_state_dependent_one(tmp_path, real_store):
    from scripts import load_script

    table2 = load_script("offline/table2.py", "table2_script")
    config = PolicyConfig(arch="nature", obs_shape=(64, 64, 3), num_actions=4, action_meanings=list(BREAKOUT))
    constant = ActorCritic(config)
    with torch.no_grad():  # the action logits ignore the state: always FIRE
        constant.actor.weight.zero_()
        constant.actor.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    save_policy(constant, tmp_path / "run" / "policy")
    profile = table2.action_profile(tmp_path / "run", real_store.root)
    assert profile == {"top_share": 1.0, "top_action": "FIRE", "distinct": 1, "observations": 1024}
    assert json.loads((tmp_path / "run" / "action_profile.json").read_text())["profile"] == profile  # cached
    # frames lit in one of four quadrants and large random action weights: the argmax follows the frame
    plain = TrajectoryStore(tmp_path / "plain", create=True)
    for quadrant in range(4):
        frames = np.zeros((5, 64, 64, 3), np.uint8)
        frames[:, 32 * (quadrant // 2):32 * (quadrant // 2 + 1), 32 * (quadrant % 2):32 * (quadrant % 2 + 1)] = 255
        plain.add_episode(frames, np.zeros(4, np.int64), np.zeros(4, np.float32),
                          np.array([0, 0, 0, 1], bool), np.zeros(4, bool), env_id="ALE/Breakout-v5",
                          action_meanings=BREAKOUT)
    torch.manual_seed(0)
    varied = ActorCritic(config)
    with torch.no_grad():
        varied.actor.weight.normal_(0.0, 1.0)
    # the run goes on and saves a new policy in the same folder: the cached profile is not reused
    time.sleep(0.01)
    save_policy(varied, tmp_path / "run" / "policy")
    profile_varied = table2.action_profile(tmp_path / "run", plain.root)
    assert profile_varied["top_share"] < 1.0 and profile_varied["distinct"] > 1
    (tmp_path / "run" / "action_profile.json").write_text('{"key": ')  # a write cut off: profiled again
    assert table2.action_profile(tmp_path / "run", plain.root) == profile_varied
    assert table2.action_profile(tmp_path / "missing", real_store.root) is None
    rows = table2.table({"CQL": [{"eval": {"train": {"return": 7.5}}, "real_transitions": 36,
                                  "synthetic_transitions": 0, "steps": 2}] * 2}, "procgen/coinrun",
                        {"CQL": [profile, profile_varied]})
    low = min(profile_varied["top_share"], 1.0)
    assert f"| {(1.0 + low) / 2:.3f}, lowest {low:.3f} (FIRE" in rows and "| 8.58 ± 0.29 |" in rows
