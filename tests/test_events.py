"""Event-level evaluation: reward / termination event matching, closed-loop returns, event acceptance.

Real components throughout: windows of real Breakout episodes collected into a tiny store, the tiny simulator of
``tiny_sim.py``, and the real ALE env for the closed-loop comparison.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny_sim import make_tiny_sim

from dws_gym.collect import CollectArgs, collect
from dws_gym.data import TrajectoryStore, split_episodes
from dws_gym.envs.real import make_real_env
from dws_gym.evaluation import (
    MIN_RETURN_CORRELATION,
    ClosedLoopResult,
    EventResult,
    check_event_acceptance,
    closed_loop_returns,
    event_acceptance_summary,
    evaluate_events,
    evaluate_held_out,
    first_end_step,
    match_events,
    pearson,
    returns_until_end,
    sample_eval_clips,
    score_events,
)

K = 3
H = 6


# ------------------------------------------------------------------------------------------------ matching


def test_one_step_early_matches_two_steps_early_does_not() -> None:
    true = np.zeros((3, 10), bool)
    true[:, 5] = True
    pred = np.zeros((3, 10), bool)
    pred[0, 4] = True  # one step early: matches
    pred[1, 3] = True  # two steps early: does not
    pred[2, 6] = True  # one step late: matches
    pred_matched, true_matched = match_events(pred, true, tolerance=1)
    np.testing.assert_array_equal(true_matched[:, 5], [True, False, True])
    np.testing.assert_array_equal(pred_matched, pred & np.array([[True], [False], [True]]))
    # Tolerance 0: only the same step; tolerance 2 reaches the two-steps-early event.
    assert not match_events(pred, true, tolerance=0)[1].any()
    assert match_events(pred, true, tolerance=2)[1][:, 5].all()


def test_each_event_is_matched_at_most_once() -> None:
    # Two dreamed events around one real event: only one of them counts.
    true = np.zeros((1, 8), bool)
    true[0, 4] = True
    pred = np.zeros((1, 8), bool)
    pred[0, [3, 5]] = True
    pred_matched, true_matched = match_events(pred, true)
    assert true_matched.sum() == 1 and pred_matched.sum() == 1 and pred_matched[0, 3]  # the earliest one
    # One dreamed event between two real events serves only one of them.
    true = np.zeros((1, 8), bool)
    true[0, [2, 4]] = True
    pred = np.zeros((1, 8), bool)
    pred[0, 3] = True
    pred_matched, true_matched = match_events(pred, true)
    assert true_matched.sum() == 1 and pred_matched.sum() == 1 and true_matched[0, 2]
    # Greedy in time order still finds both pairs when they exist: real 2, 3 and dreamed 1, 2.
    true = np.zeros((1, 6), bool)
    true[0, [2, 3]] = True
    pred = np.zeros((1, 6), bool)
    pred[0, [1, 2]] = True
    pred_matched, true_matched = match_events(pred, true)
    assert true_matched.sum() == 2 and pred_matched.sum() == 2
    # Events of different windows never match.
    true, pred = np.zeros((2, 4), bool), np.zeros((2, 4), bool)
    true[0, 1], pred[1, 1] = True, True
    assert not any(m.any() for m in match_events(pred, true))


def test_match_events_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        match_events(np.zeros(4, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match="tolerance"):
        match_events(np.zeros((1, 4), bool), np.zeros((1, 4), bool), tolerance=-1)


def test_score_events_per_horizon_rows() -> None:
    t = 4
    true_r = np.zeros((2, t))
    pred_r = np.zeros((2, t))
    true_r[0, 1] = 1.0  # real reward at h = 2 ...
    pred_r[0, 0] = 1.0  # ... dreamed at h = 1: matched (one step early)
    true_r[1, 3] = 1.0  # real reward at h = 4, never dreamed
    pred_r[1, 0] = 1.0  # dreamed reward at h = 1, nothing real near it
    true_t = np.zeros((2, t), bool)
    pred_t = np.zeros((2, t), bool)
    true_t[1, 3] = pred_t[1, 3] = True
    result = score_events(pred_r, true_r, pred_t, true_t)
    rows = result.table.rows
    assert [row["h"] for row in rows] == [1, 2, 3, 4, "all"]
    # Recall sits in the real event's row, precision in the dreamed event's row.
    assert rows[1]["reward recall"] == 1.0 and rows[1]["reward real"] == 1
    assert rows[3]["reward recall"] == 0.0 and rows[3]["reward real"] == 1
    assert rows[0]["reward precision"] == 0.5 and rows[0]["reward dreamed"] == 2
    assert math.isnan(rows[2]["reward recall"]) and math.isnan(rows[2]["reward precision"])  # no events at h = 3
    assert result.overall("reward") == {"recall": 0.5, "precision": 0.5, "real": 2, "dreamed": 2}
    assert result.overall("terminated") == {"recall": 1.0, "precision": 1.0, "real": 1, "dreamed": 1}
    assert result.horizon == t and result.num_clips == 2
    md = result.to_markdown()
    assert "| h | reward recall | reward precision |" in md and "Life-loss events are not scored" in md
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["overall"]["reward"]["recall"] == 0.5 and d["table"]["rows"][2]["reward recall"] is None


def test_score_events_sign_matching() -> None:
    true_r = np.array([[0.0, 1.0, 0.0]])
    pred_r = np.array([[0.0, -1.0, 0.0]])
    no_term = np.zeros((1, 3), bool)
    assert score_events(pred_r, true_r, no_term, no_term).overall("reward")["recall"] == 1.0
    signed = score_events(pred_r, true_r, no_term, no_term, match_sign=True)
    assert signed.overall("reward") == {"recall": 0.0, "precision": 0.0, "real": 1, "dreamed": 1}
    assert signed.match_sign and "same sign" in signed.to_markdown()
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        score_events(pred_r, true_r[:, :2], no_term, no_term)


# ------------------------------------------------------------------------------------ on real windows


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Held-out windows of real Breakout episodes (random policy), with their logged rewards and flags."""
    out = tmp_path_factory.mktemp("breakout")
    collect(CollectArgs(env_id="ALE/Breakout-v5", steps=400, out=str(out), num_envs=4, progress=False))
    store = TrajectoryStore(out)
    _, held = split_episodes(store, held_out_fraction=0.5)
    return sample_eval_clips(store, held, K, H, 8, np.random.default_rng(0))


def _always_reward_sim():
    """The tiny simulator with its reward head fixed on the +1 class: a dreamed reward at every step."""
    sim = make_tiny_sim(0, context=K, term_logit=-10.0)
    with torch.no_grad():
        sim.reward_head.reward_out.weight.zero_()
        sim.reward_head.reward_out.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    return sim


def test_sample_eval_clips_carry_the_per_step_events(clips) -> None:
    for key in ("rewards", "terminated", "life_lost"):
        assert clips[key].shape == (8, K + H - 1)


def test_evaluate_events_on_real_windows(clips) -> None:
    sim = _always_reward_sim()
    result = evaluate_events(sim, clips, horizon=H, generator=torch.Generator().manual_seed(0))
    assert isinstance(result, EventResult) and result.num_clips == 8 and result.horizon == H
    real = clips["rewards"][:, K - 1 :] != 0
    reward = result.overall("reward")
    assert reward["real"] == int(real.sum()) and reward["dreamed"] == 8 * H
    # Every step has a dreamed reward, so every real reward is found, and one dreamed event per real one matches.
    if real.any():
        assert reward["recall"] == 1.0
    assert reward["precision"] == pytest.approx(real.sum() / (8 * H))
    for h, row in enumerate(result.table.rows[:-1]):
        assert row["reward real"] == int(real[:, h].sum()) and row["reward dreamed"] == 8
    assert result.overall("terminated")["dreamed"] == 0
    assert math.isnan(result.overall("terminated")["precision"])
    with pytest.raises(ValueError, match="rewards"):
        evaluate_events(sim, {"frames": clips["frames"], "actions": clips["actions"]}, horizon=H, generator=None)


def test_evaluate_held_out_events_match_evaluate_events(clips) -> None:
    sim = make_tiny_sim(1, context=K)
    with torch.no_grad():  # rewards that vary with the frames and actions
        sim.reward_head.reward_out.weight.normal_(0.0, 2.0)
    held = evaluate_held_out(sim, clips, horizon=H, generator=torch.Generator().manual_seed(3), shuffle_rng=0,
                             one_step_rewards=False, events=True)  # fmt: skip
    alone = evaluate_events(sim, clips, horizon=H, generator=torch.Generator().manual_seed(3))
    assert held.events is not None and held.events.table.rows == alone.table.rows
    np.testing.assert_array_equal(held.events.arrays["reward_dreamed"], held.arrays["rollout_rewards"] != 0)
    d = json.loads(json.dumps(held.to_dict(), allow_nan=False))
    assert d["events"]["overall"]["reward"]["real"] == int((clips["rewards"][:, K - 1 :] != 0).sum())
    assert set(d["event_acceptance"]) == {"reward_recall", "reward_precision", "all"}
    assert "**Event acceptance**" in d["table_markdown"] and "Reward / termination events" in d["table_markdown"]
    # Without events=True nothing changes for existing callers.
    plain = evaluate_held_out(sim, clips, horizon=2, generator=torch.Generator().manual_seed(3), shuffle_rng=0,
                              one_step_rewards=False)  # fmt: skip
    assert plain.events is None and "events" not in plain.to_dict() and plain.event_acceptance() is None


# ------------------------------------------------------------------------------------------ closed loop


def test_returns_until_end_and_first_end_step() -> None:
    rewards = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 7.0]])
    done = np.array([[False, True, True, False], [False] * 4, [True, False, False, False]])
    np.testing.assert_array_equal(returns_until_end(rewards, done), [3.0, 4.0, 5.0])  # the end step's reward counts
    np.testing.assert_array_equal(first_end_step(done), [2, -1, 1])


def test_pearson_is_nan_safe() -> None:
    r, note = pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    assert note is None and r == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])
    r, note = pearson([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert math.isnan(r) and "dream returns have zero variance" in note
    r, note = pearson([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(r) and "real and dream" in note
    r, note = pearson([1.0], [2.0])
    assert math.isnan(r) and "at least 2" in note


def test_closed_loop_real_returns_equal_a_direct_real_run() -> None:
    episodes, steps, seed = 3, 40, 4  # a seed under which some, not all, real episodes score
    sim = make_tiny_sim(0, context=K)  # fresh head: never a reward, never a termination
    result = closed_loop_returns(sim, "ALE/Breakout-v5", episodes, steps, seed, env_kwargs={"num_threads": 1})
    assert isinstance(result, ClosedLoopResult) and result.episodes == episodes and result.steps == steps
    for arr in (result.real_returns, result.dream_returns, result.real_end_steps, result.dream_end_steps):
        assert arr.shape == (episodes,)
    assert result.actions.shape == (episodes, K - 1 + steps) and result.actions.max() < 4
    assert (result.actions == 1).any()  # FIRE is among the random actions

    env = make_real_env("ALE/Breakout-v5", num_envs=episodes, num_threads=1)
    try:
        env.reset(seed=seed)
        rewards, done = [], []
        for t in range(K - 1 + steps):
            _, reward, terminated, truncated, _ = env.step(result.actions[:, t])
            if t >= K - 1:  # the context steps' rewards are not counted
                rewards.append(reward)
                done.append(terminated | truncated)
    finally:
        env.close()
    expected = returns_until_end(np.stack(rewards, 1), np.stack(done, 1))
    np.testing.assert_array_equal(result.real_returns, expected)
    assert 0 < result.real_returns.sum() and result.real_returns.std() > 0
    # The fresh head dreams no reward: zero variance on the dream side, so the correlation is NaN and says why.
    np.testing.assert_array_equal(result.dream_returns, np.zeros(episodes))
    assert math.isnan(result.correlation) and "dream returns have zero variance" in result.correlation_note
    md = result.to_markdown()
    assert "| side | mean return | std | episodes ended |" in md and "nan (undefined" in md
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["correlation"] is None and len(d["real_returns"]) == episodes

    again = closed_loop_returns(sim, "ALE/Breakout-v5", episodes, steps, seed, env_kwargs={"num_threads": 1})
    np.testing.assert_array_equal(again.actions, result.actions)
    np.testing.assert_array_equal(again.real_returns, result.real_returns)

    # The reference is the same actions in a real env reset with seed + 1, counted the same way.
    env = make_real_env("ALE/Breakout-v5", num_envs=episodes, num_threads=1)
    try:
        env.reset(seed=seed + 1)
        rewards, done = [], []
        for t in range(K - 1 + steps):
            _, reward, terminated, truncated, _ = env.step(result.actions[:, t])
            if t >= K - 1:
                rewards.append(reward)
                done.append(terminated | truncated)
    finally:
        env.close()
    np.testing.assert_array_equal(result.reference_returns,
                                  returns_until_end(np.stack(rewards, 1), np.stack(done, 1)))
    ref_corr, _ = pearson(result.real_returns, result.reference_returns)
    assert result.reference_correlation == pytest.approx(ref_corr, nan_ok=True)
    assert "second real env (reset seed 5, so another start)" in md
    assert len(d["reference_returns"]) == episodes
    plain = closed_loop_returns(sim, "ALE/Breakout-v5", episodes, steps, seed, env_kwargs={"num_threads": 1},
                                reference=False)
    assert plain.reference_returns is None and math.isnan(plain.reference_correlation)


def test_closed_loop_stops_the_dream_return_at_its_termination() -> None:
    sim = make_tiny_sim(0, context=K, term_logit=10.0)  # predicts termination at every step
    with torch.no_grad():
        sim.reward_head.reward_out.weight.zero_()
        sim.reward_head.reward_out.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))  # and a reward of +1
    result = closed_loop_returns(sim, episodes=2, steps=3, seed=0, env_kwargs={"num_threads": 1})
    np.testing.assert_array_equal(result.dream_returns, [1.0, 1.0])  # only the terminating first step counts
    np.testing.assert_array_equal(result.dream_end_steps, [1, 1])
    with pytest.raises(ValueError, match="actions must be"):
        closed_loop_returns(sim, episodes=2, steps=3, actions=np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="has actions"):
        closed_loop_returns(sim, "ALE/Pong-v5", episodes=1, steps=1)


# ------------------------------------------------------------------------------------------- acceptance


def _closed_loop(real: list[float], dream: list[float], reference: list[float] | None = None) -> ClosedLoopResult:
    real_a, dream_a = np.asarray(real, float), np.asarray(dream, float)
    corr, note = pearson(real_a, dream_a)
    ref_a = None if reference is None else np.asarray(reference, float)
    ref_corr = float("nan") if ref_a is None else pearson(real_a, ref_a)[0]
    n = len(real)
    return ClosedLoopResult(env_id="ALE/Breakout-v5", steps=10, seed=0, context_frames=K, real_returns=real_a,
                            dream_returns=dream_a, real_end_steps=np.full(n, -1), dream_end_steps=np.full(n, -1),
                            actions=np.zeros((n, K - 1 + 10), np.int64), correlation=corr, correlation_note=note,
                            reference_returns=ref_a, reference_correlation=ref_corr)


def test_check_event_acceptance() -> None:
    t = 5
    true_r = np.zeros((5, t))
    true_r[:, 2] = 1.0
    pred_r = np.zeros((5, t))
    pred_r[:3, 1] = 1.0  # 3 of 5 real events found one step early: recall 0.6
    pred_r[0, 4] = 1.0  # plus one stray dreamed event: precision 3 / 4
    no = np.zeros((5, t), bool)
    events = score_events(pred_r, true_r, no, no)
    good_loop = _closed_loop([1, 2, 3, 4], [1.2, 2.1, 3.5, 4.4])  # mean +12.5 %, correlation ~0.99
    verdict = check_event_acceptance(events, good_loop)
    assert verdict == {"reward_recall": True, "reward_precision": True, "closed_loop_return": True,
                       "closed_loop_correlation": True, "all": True}  # fmt: skip
    assert check_event_acceptance(events, min_reward_recall=0.61) == {
        "reward_recall": False, "reward_precision": True, "all": False}  # fmt: skip
    off = check_event_acceptance(closed_loop=_closed_loop([1, 2, 3, 4], [2, 3, 4, 5]))  # mean +40 %
    assert off == {"closed_loop_return": False, "closed_loop_correlation": True, "all": False}
    flat = check_event_acceptance(closed_loop=_closed_loop([1, 2, 3, 4], [2.5, 2.5, 2.5, 2.5]))
    assert flat["closed_loop_return"] is True and flat["closed_loop_correlation"] is False  # NaN fails
    summary = event_acceptance_summary(events, _closed_loop([1, 2, 3, 4], [2.5, 2.5, 2.5, 2.5]))
    assert "PASS `reward_recall`" in summary and "FAIL `closed_loop_correlation`" in summary
    assert "zero variance" in summary and "overall: FAIL" in summary
    with pytest.raises(ValueError, match="pass events"):
        check_event_acceptance()


def test_the_real_reference_is_a_baseline_and_never_lowers_the_correlation_bar() -> None:
    real = [1, 2, 3, 4, 5, 6]
    weak_ref = [1, 3, 6, 5, 2, 4]  # a real game from another start correlates 0.314: it does not lower the 0.5 bar
    strong_ref = [1, 2, 3, 4, 5, 7]
    good, mid, low = [2, 1, 3, 5, 4, 6], [1, 3, 5, 6, 4, 2], [1, 4, 5, 6, 2, 3]  # 0.886, 0.257, 0.143

    def ok(dream: list[int], ref: list[int] | None) -> bool:
        return check_event_acceptance(closed_loop=_closed_loop(real, dream, ref))["closed_loop_correlation"]

    assert pearson(np.asarray(real, float), np.asarray(weak_ref, float))[0] == pytest.approx(0.3143, abs=1e-3)
    assert ok(good, weak_ref) and ok(good, strong_ref) and ok(good, None)
    assert not ok(mid, weak_ref) and not ok(mid, strong_ref) and not ok(mid, None)
    assert not ok(low, weak_ref)
    text = event_acceptance_summary(closed_loop=_closed_loop(real, mid, weak_ref))
    assert "correlation 0.257 >= 0.5 (a real game from another start under the same actions: 0.314)" in text
    assert "FAIL `closed_loop_correlation`" in text
    assert "Baseline:" in _closed_loop(real, mid, weak_ref).to_markdown()
