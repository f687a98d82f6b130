"""Prioritized imagination: the sum tree and the prioritized start-state buffer."""

import numpy as np
import pytest
from scipy.stats import chisquare

from dws_gym.envs.dream import DreamVectorEnv
from dws_gym.imagination import PrioritizedStartStates, StartStateSampler, SumTree
from tiny_sim import make_tiny_sim

K = 3


def windows(n: int, seed: int = 0, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, K, size, size, 3), dtype=np.uint8), rng.integers(0, 4, (n, K - 1))


# ------------------------------------------------------------------------------------------------------- SumTree


def test_sum_tree_totals_find_and_updates():
    tree = SumTree(5)  # not a power of two: 8 leaves underneath
    tree.update([0, 1, 2, 3, 4], [1.0, 0.0, 2.0, 3.0, 4.0])
    assert tree.total == 10.0 and tree.min == 0.0
    prefix = np.array([0.0, 0.999, 1.0, 2.999, 3.0, 5.999, 6.0, 9.999])
    np.testing.assert_array_equal(tree.find(prefix), [0, 0, 2, 2, 3, 3, 4, 4])  # leaf 1 (value 0) never found
    tree.update([2, 2], [5.0, 0.5])  # a repeated index keeps its last value
    assert tree.total == pytest.approx(8.5)
    np.testing.assert_allclose(tree.get([0, 1, 2, 3, 4]), [1.0, 0.0, 0.5, 3.0, 4.0])
    # mass at (or rounding past) the total stays on a non-empty leaf
    assert tree.find([np.nextafter(tree.total, 0), tree.total])[0] == 4
    assert tree.find([tree.total])[0] == 4
    one = SumTree(1)
    one.update([0], [2.0])
    assert one.total == 2.0 and one.find([1.5])[0] == 0
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        tree.update([5], [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        tree.update([0], [-1.0])


def test_sum_tree_sampling_frequencies_match_leaves():
    leaves = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 6.0, 0.0, 7.0, 2.5, 1.0, 3.0])
    tree = SumTree(len(leaves))
    tree.update(np.arange(len(leaves)), leaves)
    rng = np.random.default_rng(0)
    draws = tree.find(rng.random(50_000) * tree.total)
    counts = np.bincount(draws, minlength=len(leaves))
    assert counts[6] == 0
    keep = leaves > 0
    expected = leaves[keep] / leaves.sum() * len(draws)
    # chi-square goodness of fit at the 0.1% level (fixed seed: the statistic is deterministic)
    assert chisquare(counts[keep], expected).pvalue > 1e-3


# ------------------------------------------------------------------------------------------------------- buffer


def test_add_returns_increasing_ids_and_sample_follows_the_protocol():
    buf = PrioritizedStartStates(10)
    assert isinstance(buf, StartStateSampler) and len(buf) == 0
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1, np.random.default_rng(0))
    frames, actions = windows(4)
    np.testing.assert_array_equal(buf.add(frames, actions), [0, 1, 2, 3])
    np.testing.assert_array_equal(buf.add(*windows(2, seed=1)), [4, 5])
    f, a, ids = buf.sample(7, np.random.default_rng(0))
    assert f.shape == (7, K, 8, 8, 3) and f.dtype == np.uint8 and a.shape == (7, K - 1) and ids.dtype == np.int64
    for j, i in enumerate(ids):
        wf, wa = buf.windows(np.array([i]))
        np.testing.assert_array_equal(f[j], wf[0])
        np.testing.assert_array_equal(a[j], wa[0])
    np.testing.assert_array_equal(buf.windows(np.arange(4))[0], frames)
    # the rng is the only randomness
    np.testing.assert_array_equal(ids, buf.sample(7, np.random.default_rng(0))[2])


def test_sampling_frequencies_match_td_priorities():
    buf = PrioritizedStartStates(16, alpha=0.6, eps=1e-3)
    ids = buf.add(*windows(8))
    td = np.array([0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 0.05, 3.0])
    buf.update_priorities(ids, td)
    p = (np.abs(td) + 1e-3) ** 0.6
    np.testing.assert_allclose(buf.probabilities(ids), p / p.sum())
    drawn = buf.sample(40_000, np.random.default_rng(1))[2]
    counts = np.bincount(drawn, minlength=8)
    assert chisquare(counts, p / p.sum() * len(drawn)).pvalue > 1e-3
    # alpha = 0 is uniform whatever the priorities
    uni = PrioritizedStartStates(16, alpha=0.0)
    uni.update_priorities(uni.add(*windows(8)), td)
    np.testing.assert_allclose(uni.probabilities(np.arange(8)), np.full(8, 1 / 8))
    np.testing.assert_allclose(uni.importance_weights(np.arange(8)), 1.0)


def test_updates_and_max_priority_insertion():
    buf = PrioritizedStartStates(16, alpha=1.0, eps=0.5)
    ids = buf.add(*windows(3))
    np.testing.assert_allclose(buf.tree.get(ids), 1.0)  # max priority before any update
    buf.update_priorities(ids[:2], [3.5, -0.25])  # |delta|: signs do not matter
    np.testing.assert_allclose(buf.tree.get(ids), [4.0, 0.75, 1.0])
    assert buf.max_priority == 4.0
    new = buf.add(*windows(2, seed=3))
    np.testing.assert_allclose(buf.tree.get(new), 4.0)  # new windows enter at the largest priority seen
    buf.update_priorities(ids[:1], [0.0])
    assert buf.max_priority == 4.0  # the running max never decreases
    buf.update_priorities(np.array([new[0], new[0], ids[2]]), [1.0, 2.0, 0.5])  # a repeated id gets the mean
    np.testing.assert_allclose(buf.tree.get([new[0], ids[2]]), [2.0, 1.0])
    assert buf.tree.total == pytest.approx(0.5 + 0.75 + 1.0 + 2.0 + 4.0)
    with pytest.raises(ValueError, match="add\\(\\) returned"):
        buf.update_priorities([99], [1.0])
    with pytest.raises(ValueError, match="finite"):
        buf.update_priorities([0], [np.nan])


def test_eviction_of_the_oldest_and_ignored_updates_of_evicted_ids():
    buf = PrioritizedStartStates(4, alpha=1.0, eps=1e-3)
    frames, actions = windows(6)
    buf.add(frames[:3], actions[:3])
    buf.update_priorities([0, 1, 2], [5.0, 5.0, 5.0])
    ids = buf.add(frames[3:], actions[3:])  # ids 3, 4, 5 overwrite the slots of 0 and 1
    np.testing.assert_array_equal(ids, [3, 4, 5])
    assert len(buf) == 4 and buf.next_id == 6
    drawn = buf.sample(2000, np.random.default_rng(0))[2]
    assert set(np.unique(drawn)) == {2, 3, 4, 5}
    np.testing.assert_array_equal(buf.windows([5])[0][0], frames[5])
    with pytest.raises(ValueError, match="evicted"):
        buf.windows([0])
    before = buf.tree.get(np.arange(4)).copy()
    buf.update_priorities([0, 1], [100.0, 100.0])  # evicted: ignored, the slots' new windows keep theirs
    np.testing.assert_array_equal(buf.tree.get(np.arange(4)), before)
    assert buf.probabilities([0])[0] == 0.0 and buf.importance_weights([0])[0] == 1.0
    # more windows than the capacity at once: only the newest survive
    big = PrioritizedStartStates(3)
    ids = big.add(*windows(5))
    np.testing.assert_array_equal(ids, np.arange(5))
    np.testing.assert_array_equal(np.sort(np.unique(big.sample(500, np.random.default_rng(0))[2])), [2, 3, 4])
    np.testing.assert_array_equal(big.windows([2, 3, 4])[0], windows(5)[0][2:])


def test_importance_weights():
    buf = PrioritizedStartStates(8, alpha=0.7, beta=0.4, eps=1e-2)
    ids = buf.add(*windows(5))
    td = np.array([0.1, 0.4, 1.0, 0.02, 2.0])
    buf.update_priorities(ids, td)
    p = (td + 1e-2) ** 0.7
    prob = p / p.sum()
    for beta in (0.4, 0.7, 1.0):
        buf.set_beta(beta)
        w = (5 * prob) ** -beta
        np.testing.assert_allclose(buf.importance_weights(ids), w / w.max())
    assert buf.importance_weights(ids)[3] == pytest.approx(1.0)  # the least likely window has the largest weight
    # normalised over the batch asked for: its least likely window has weight 1, whatever else the buffer holds
    batch = ids[[0, 1, 2]]
    w = (5 * prob[[0, 1, 2]]) ** -1.0
    np.testing.assert_allclose(buf.importance_weights(batch), w / w.max())
    assert buf.importance_weights(batch).max() == pytest.approx(1.0)
    buf.set_beta(0.0)
    np.testing.assert_allclose(buf.importance_weights(ids), 1.0)
    with pytest.raises(ValueError, match="beta"):
        buf.set_beta(1.5)


def test_state_dict_round_trip_repeats_the_draws():
    buf = PrioritizedStartStates(4, alpha=0.6, beta=0.5)
    buf.add(*windows(6))
    buf.update_priorities([3, 4, 5], [0.3, 2.0, 0.1])
    copy = PrioritizedStartStates(4)
    copy.load_state_dict(buf.state_dict())
    a, b = buf.sample(50, np.random.default_rng(5)), copy.sample(50, np.random.default_rng(5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert copy.next_id == 6 and copy.beta == 0.5
    np.testing.assert_array_equal(copy.add(*windows(1, seed=9)), [6])
    with pytest.raises(ValueError, match="capacity"):
        PrioritizedStartStates(5).load_state_dict(buf.state_dict())


def test_plugs_into_the_dream_env():
    sim = make_tiny_sim(0, context=K)
    buf = PrioritizedStartStates(32)
    ids = buf.add(*windows(6, size=64))
    buf.update_priorities(ids, [0.0, 0.0, 0.0, 0.0, 0.0, 10.0])
    env = DreamVectorEnv(sim, 4, device="cpu", start_states=buf)
    obs, info = env.reset(seed=0)
    assert set(info["start_id"]) <= set(ids.tolist())
    frames, _ = buf.windows(info["start_id"])
    np.testing.assert_array_equal(obs, frames[:, -1])
    again = DreamVectorEnv(sim, 4, device="cpu", start_states=buf).reset(seed=0)[1]["start_id"]
    np.testing.assert_array_equal(info["start_id"], again)  # seeded through the env's rng
    env.update_priorities(np.array([ids[0], -1]), np.array([3.0, 7.0]))  # -1 (clips given in options) skipped
    assert buf.tree.get([ids[0]])[0] == pytest.approx((3.0 + 1e-3) ** 0.6)
