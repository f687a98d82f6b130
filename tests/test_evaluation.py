"""Held-out evaluation: open-loop rollouts, the copy-last-frame baseline, shuffled actions, acceptance.

The simulators here are real components built small: a fresh residual :class:`FlowWorldModel` (which predicts the
copy-the-last-frame baseline exactly) and a fresh :class:`RewardHead`, run on real Breakout frames collected into a
tiny trajectory store. The frames are subsampled to 32x32 (every second pixel) so the tests stay fast on one core.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dws_gym.collect import CollectArgs, collect
from dws_gym.data import TrajectoryStore, split_episodes
from dws_gym.evaluation import (
    EvalResult,
    acceptance_summary,
    check_acceptance,
    evaluate_held_out,
    open_loop_rollout,
    sample_eval_clips,
)
from dws_gym.metrics import rollout_table
from dws_gym.models.flow import FlowConfig, FlowWorldModel
from dws_gym.models.reward import RewardConfig, RewardHead
from dws_gym.simulator import Simulator, SimulatorConfig

K = 4
H = 15
SIZE = 32
MEANINGS = ["NOOP", "FIRE", "RIGHT", "LEFT"]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    """Three real Breakout episodes of 100 random-policy steps each."""
    out = tmp_path_factory.mktemp("breakout")
    result = collect(CollectArgs(env_id="ALE/Breakout-v5", steps=300, out=str(out), num_envs=3, progress=False))
    assert result.episodes >= 3
    return TrajectoryStore(out)


def _downsample(clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(clips)
    out["frames"] = np.ascontiguousarray(clips["frames"][:, :, ::2, ::2])
    return out


@pytest.fixture(scope="module")
def clips(store: TrajectoryStore) -> dict[str, np.ndarray]:
    """Six full held-out windows of K + H frames, 32x32."""
    _, held_out = split_episodes(store, held_out_fraction=0.4)
    batch = sample_eval_clips(store, held_out, K, H, 6, np.random.default_rng(0))
    return _downsample(batch)


def make_sim(
    start_frames: np.ndarray, start_actions: np.ndarray, *, perturb_model: bool = False, perturb_head: bool = False
) -> Simulator:
    torch.manual_seed(0)
    world_model = FlowWorldModel(
        FlowConfig(
            frame_size=SIZE, patch_size=4, num_heads=2, head_dim=48, num_layers=1, ffn_dim=64, freq_dim=16,
            text_dim=16, num_prompt_tokens=1, num_actions=len(MEANINGS), cond_dim=16, context_frames=K,
            sampling_steps=1,
        )
    )  # fmt: skip
    head = RewardHead(
        RewardConfig(context_frames=K, frame_shape=(SIZE, SIZE, 3), num_actions=len(MEANINGS), dim=16, depth=1,
                     num_heads=2, patch_size=4)
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)

    def randomize(param: torch.nn.Parameter, std: float) -> None:
        param.copy_(torch.randn(param.shape, generator=g) * std)

    with torch.no_grad():
        if perturb_model:  # non-zero output and action layers: frames now depend on the noise and the actions
            randomize(world_model.transformer.proj_out.weight, 0.05)
            for module in world_model.transformer.dws_action.modulations:
                randomize(module.linear2.weight, 0.5)
        if perturb_head:  # rewards and terminations that depend on the action (and vary between transitions)
            randomize(head.action_table.weight, 3.0)
            for layer in (head.reward_out, head.termination_out):
                randomize(layer.weight, 1.0)
                layer.bias.zero_()
    config = SimulatorConfig(
        env_id="ALE/Breakout-v5", action_meanings=MEANINGS, obs_shape=(SIZE, SIZE, 3), context_frames=K,
        sampling_steps=1,
    )  # fmt: skip
    return Simulator(config, world_model, head, start_frames, start_actions)


@pytest.fixture(scope="module")
def fresh_sim(clips: dict[str, np.ndarray]) -> Simulator:
    return make_sim(clips["frames"][:, :K], clips["actions"][:, : K - 1])


@pytest.fixture(scope="module")
def fresh_result(fresh_sim: Simulator, clips: dict[str, np.ndarray]) -> EvalResult:
    return evaluate_held_out(
        fresh_sim, clips, horizon=H, generator=torch.Generator().manual_seed(0), shuffle_rng=0, keep_frames=True
    )


# ------------------------------------------------------------------------------------------ data selection


def test_split_episodes_holds_out_the_last_ids(store: TrajectoryStore, tmp_path) -> None:
    ids = store.episode_ids()
    train, held = split_episodes(store, held_out_fraction=0.1)
    assert held == ids[-1:] and train == ids[:-1]  # ceil(0.1 * 3) = 1 episode, the newest
    assert split_episodes(store, held_out_fraction=0.1) == (train, held)  # deterministic
    train, held = split_episodes(store, held_out_fraction=0.5)
    assert held == ids[-2:] and train == ids[:1]  # ceil(1.5) = 2
    assert split_episodes(store, 0.1, min_held_out=2) == (ids[:1], ids[-2:])
    assert split_episodes(store, 0.1, episode_ids=[ids[2], ids[0]]) == ([ids[0]], [ids[2]])

    with pytest.raises(ValueError, match="at least 1 training episode"):
        split_episodes(store, 0.1, min_held_out=3)
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_episodes(store, 1.0)
    one = TrajectoryStore(tmp_path / "one", create=True)
    one.add_episode(np.zeros((3, 8, 8, 3), np.uint8), np.zeros(2, np.int64), np.zeros(2), [False] * 2, [False] * 2,
                    env_id="toy")  # fmt: skip
    with pytest.raises(ValueError, match="collect more episodes"):
        split_episodes(one)


def test_sample_eval_clips_draws_only_full_windows(store: TrajectoryStore) -> None:
    _, held = split_episodes(store, held_out_fraction=0.4)
    batch = sample_eval_clips(store, held, K, H, 20, np.random.default_rng(1))
    assert batch["frames"].shape == (20, K + H, 64, 64, 3) and batch["frames"].dtype == np.uint8
    assert batch["actions"].shape == (20, K + H - 1)
    assert batch["mask"].all()
    assert set(batch["episode_id"].tolist()) <= set(held)
    frames_of = np.array([store.meta(int(e)).num_frames for e in batch["episode_id"]])
    assert (batch["start"] + K + H <= frames_of).all()
    assert len({(int(e), int(s)) for e, s in zip(batch["episode_id"], batch["start"])}) == 20  # distinct
    # Frames really are the episode's frames at those positions.
    e, s = int(batch["episode_id"][0]), int(batch["start"][0])
    np.testing.assert_array_equal(batch["frames"][0], store.obs(e)[s : s + K + H])
    again = sample_eval_clips(store, held, K, H, 20, np.random.default_rng(1))
    np.testing.assert_array_equal(again["start"], batch["start"])

    episode = store.meta(held[0])
    with pytest.raises(ValueError, match="no window of"):
        sample_eval_clips(store, held[:1], K, episode.num_frames, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="distinct windows"):
        sample_eval_clips(store, held[:1], K, H, 10_000, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        sample_eval_clips(store, held, K, H, 2, 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ rollouts


def test_open_loop_rollout_shapes_and_bad_inputs(fresh_sim: Simulator, clips: dict[str, np.ndarray]) -> None:
    ctx, ctx_actions = clips["frames"][:, :K], clips["actions"][:, : K - 1]
    future = clips["actions"][:, K - 1 : K + 2]
    out = open_loop_rollout(fresh_sim, ctx, ctx_actions, future, generator=torch.Generator().manual_seed(0),
                            batch_size=4)  # fmt: skip
    assert out["frames"].shape == (6, 3, SIZE, SIZE, 3) and out["frames"].dtype == np.uint8
    assert out["rewards"].shape == (6, 3) and out["rewards"].dtype == np.float32
    assert out["terminated"].shape == (6, 3) and out["terminated"].dtype == bool
    # A fresh residual model copies the last context frame at every step.
    np.testing.assert_array_equal(out["frames"], np.repeat(ctx[:, -1:], 3, axis=1))

    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        open_loop_rollout(fresh_sim, ctx, ctx_actions, future[:, 0], generator=g)
    with pytest.raises(ValueError, match="one action sequence per clip"):
        open_loop_rollout(fresh_sim, ctx, ctx_actions, future[:5], generator=g)
    with pytest.raises(ValueError, match="uint8"):
        open_loop_rollout(fresh_sim, ctx[:, 1:], ctx_actions, future, generator=g)  # K - 1 frames
    with pytest.raises(ValueError, match="uint8"):
        open_loop_rollout(fresh_sim, ctx.astype(np.float32), ctx_actions, future, generator=g)
    with pytest.raises(ValueError, match="must lie in"):
        open_loop_rollout(fresh_sim, ctx, ctx_actions, future + len(MEANINGS), generator=g)
    with pytest.raises(ValueError, match="batch_size"):
        open_loop_rollout(fresh_sim, ctx, ctx_actions, future, generator=g, batch_size=0)


def test_fresh_model_rollout_equals_copy_baseline(fresh_result: EvalResult, clips: dict[str, np.ndarray]) -> None:
    r = fresh_result
    copy = np.repeat(clips["frames"][:, K - 1 : K], H, axis=1)
    np.testing.assert_array_equal(r.arrays["frames"], copy)
    np.testing.assert_array_equal(r.arrays["shuffled_frames"], copy)
    for name in ("psnr", "ssim", "mse", "moving_mse"):
        assert r.metrics["model"][name].shape == (6, H)
        np.testing.assert_array_equal(r.metrics["model"][name], r.metrics["copy"][name])
        np.testing.assert_array_equal(r.metrics["shuffled"][name], r.metrics["copy"][name])
        assert r.table.column(f"{name} model") == r.table.column(f"{name} copy")
    # The baseline really is scored against the real future: frames change in Breakout, so copying errs somewhere.
    assert np.nanmax(r.metrics["copy"]["moving_mse"]) > 0
    assert (r.metrics["model"]["moving_fraction"] > 0).any()
    # Shuffling changed the actions of clips but not of the frames: no action sensitivity.
    assert not np.array_equal(r.arrays["shuffled_actions"], r.arrays["actions"])
    assert all(v == 0 or np.isnan(v) for v in r.table.column("action_sensitivity"))


def test_table_has_fifteen_horizons_with_all_three_columns(fresh_result: EvalResult) -> None:
    table = fresh_result.table
    assert [row["h"] for row in table.rows] == [*range(1, H + 1), "mean"]
    for name in ("psnr", "ssim", "mse", "moving_mse"):
        for method in ("model", "copy", "shuffled"):
            assert f"{name} {method}" in table.columns
    assert "action_sensitivity" in table.columns
    assert fresh_result.num_clips == 6 and fresh_result.num_dropped == 0 and fresh_result.horizon == H


def test_copy_model_meets_psnr_with_equality_but_not_motion_or_sensitivity(fresh_result: EvalResult) -> None:
    verdict = check_acceptance(fresh_result.table)
    # Equal PSNR passes ">=": the copying model is exactly as good as copying.
    assert verdict["psnr_not_below_copy"] is True
    # Equal moving-region MSE is not "below": copying has learned no motion ...
    assert verdict["moving_mse_below_copy"] is False
    # ... and its frames ignore the actions, so true and shuffled actions score the same (sensitivity 0 < 20 %).
    assert verdict["action_sensitive"] is False
    assert verdict["all"] is False
    summary = acceptance_summary(fresh_result.table)
    assert "PASS `psnr_not_below_copy`" in summary and "smallest margin +0 dB" in summary
    assert "FAIL `moving_mse_below_copy`" in summary and "FAIL `action_sensitive`" in summary
    assert "overall: FAIL" in summary


def test_reward_tables_and_serialisation(fresh_result: EvalResult) -> None:
    r = fresh_result
    assert r.reward_one_step is not None and r.reward_rollout is not None
    targets = r.reward_rollout.column("target")
    assert targets == ["reward<0", "reward=0", "reward>0", "terminated"]
    assert sum(r.reward_rollout.column("support")[:3]) == 6 * H  # every transition has one sign
    # A fresh head predicts "no reward, not terminated" for every transition.
    assert r.reward_one_step.column("predicted") == [0, 6 * H, 0, 0]
    assert r.arrays["one_step_rewards"].shape == (6, H) and r.arrays["true_rewards"].shape == (6, H)

    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)  # strictly valid JSON (inf / NaN became null)
    assert json.loads(text)["acceptance"] == check_acceptance(r.table)
    assert len(d["table"]["rows"]) == H + 1 and d["num_clips"] == 6
    md = r.to_markdown()
    assert d["table_markdown"] == md
    assert "| h | psnr model | psnr copy | psnr shuffled |" in md and "**Acceptance**" in md


def test_one_step_and_rollout_rewards_follow_the_step_protocol(clips: dict[str, np.ndarray]) -> None:
    """With a copying world model the simulated next frame is the last context frame, so the head's outputs can
    be recomputed directly; this pins the alignment of windows, actions and logged rewards."""
    sim = make_sim(clips["frames"][:, :K], clips["actions"][:, : K - 1], perturb_head=True)
    result = evaluate_held_out(sim, clips, horizon=3, generator=torch.Generator().manual_seed(0), shuffle_rng=0)
    frames, actions = clips["frames"], clips["actions"]
    for j in range(3):
        reward, term = sim.reward_head.predict(frames[:, j : j + K], actions[:, j + K - 1], frames[:, j + K - 1])
        np.testing.assert_array_equal(result.arrays["one_step_rewards"][:, j], reward.numpy())
        np.testing.assert_array_equal(result.arrays["one_step_terminated"][:, j], term.numpy())
    np.testing.assert_array_equal(result.arrays["rollout_rewards"][:, 0], result.arrays["one_step_rewards"][:, 0])
    np.testing.assert_array_equal(result.arrays["true_rewards"], clips["rewards"][:, K - 1 : K + 2])
    # The perturbed head's outputs vary, so a misaligned action or frame would show.
    assert len(set(result.arrays["one_step_rewards"].ravel().tolist())) > 1
    assert len(set(result.arrays["one_step_terminated"].ravel().tolist())) == 2


def test_reproducible_with_a_seeded_generator(clips: dict[str, np.ndarray]) -> None:
    sim = make_sim(clips["frames"][:, :K], clips["actions"][:, : K - 1], perturb_model=True)

    def run(seed: int, batch_size: int | None = None) -> EvalResult:
        return evaluate_held_out(sim, clips, horizon=4, generator=torch.Generator().manual_seed(seed),
                                 shuffle_rng=np.random.default_rng(3), batch_size=batch_size, one_step_rewards=False,
                                 keep_frames=True)  # fmt: skip

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a.arrays["frames"], b.arrays["frames"])
    np.testing.assert_array_equal(a.arrays["perm"], b.arrays["perm"])
    assert a.to_dict() == b.to_dict()
    assert not np.array_equal(a.arrays["frames"], c.arrays["frames"])  # the noise matters for this model
    # The perturbed model no longer copies, so its table differs from the baseline, and it follows actions.
    assert a.table.column("mse model") != a.table.column("mse copy")
    assert not np.array_equal(a.arrays["shuffled_frames"], a.arrays["frames"])
    assert any(v != 0 for v in a.table.column("action_sensitivity"))
    # Chunked stepping draws the noise in the same order as one batch (CPU generator): other noise would change
    # most pixels, while batched matmuls of another size only move a few by one level of rounding.
    diff = np.abs(run(0, batch_size=4).arrays["frames"].astype(int) - a.arrays["frames"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


# ------------------------------------------------------------------------------------------- bad inputs


def test_evaluate_held_out_rejects_bad_clips(fresh_sim: Simulator, clips: dict[str, np.ndarray]) -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="context 4 \\+ horizon 16"):
        evaluate_held_out(fresh_sim, clips, horizon=H + 1, generator=g, shuffle_rng=0)
    with pytest.raises(ValueError, match="no 'actions'"):
        evaluate_held_out(fresh_sim, {"frames": clips["frames"]}, horizon=H, generator=g, shuffle_rng=0)
    wrong = dict(clips, frames=np.ascontiguousarray(clips["frames"][:, :, :16, :16]))
    with pytest.raises(ValueError, match="uint8"):
        evaluate_held_out(fresh_sim, wrong, horizon=H, generator=g, shuffle_rng=0)
    with pytest.raises(ValueError, match="clips\\['actions'\\]"):
        evaluate_held_out(fresh_sim, dict(clips, actions=clips["actions"][:, :-1]), horizon=H, generator=g,
                          shuffle_rng=0)  # fmt: skip
    with pytest.raises(ValueError, match="horizon"):
        evaluate_held_out(fresh_sim, clips, horizon=0, generator=g, shuffle_rng=0)
    # Windows reaching past an episode end are dropped; a single remaining window cannot be shuffled against.
    mask = clips["mask"].copy()
    mask[1:, -1] = False
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_held_out(fresh_sim, dict(clips, mask=mask), horizon=H, generator=g, shuffle_rng=0)
    mask = clips["mask"].copy()
    mask[0, K + 1] = False  # inside the K + 2 frames a horizon-2 evaluation reads
    few = evaluate_held_out(fresh_sim, dict(clips, mask=mask), horizon=2, generator=g, shuffle_rng=0,
                            one_step_rewards=False)  # fmt: skip
    assert few.num_dropped == 1 and few.num_clips == 5 and few.arrays["episode_id"].shape == (5,)


def test_check_acceptance_on_constructed_tables() -> None:
    n = 3
    ones = np.ones((n, H))
    good = rollout_table(
        {"psnr": 30 * ones, "moving_mse": 0.01 * ones},
        {"psnr": 25 * ones, "moving_mse": 0.02 * ones},
        {"psnr": 20 * ones, "moving_mse": 0.0126 * ones},  # true actions 20.6 % better
    )
    assert check_acceptance(good) == {
        "psnr_not_below_copy": True, "moving_mse_below_copy": True, "action_sensitive": True, "all": True
    }  # fmt: skip
    assert "overall: PASS" in acceptance_summary(good)

    almost = rollout_table(
        {"psnr": 30 * ones, "moving_mse": 0.01 * ones},
        {"psnr": 25 * ones, "moving_mse": 0.02 * ones},
        {"psnr": 20 * ones, "moving_mse": 0.0124 * ones},  # only 19.4 % better
    )
    assert check_acceptance(almost)["action_sensitive"] is False
    assert check_acceptance(almost, sensitivity_margin=0.1)["action_sensitive"] is True

    psnr_dip = 30 * ones
    psnr_dip[:, 14] = 20.0  # loses to copying at h = 15 only
    nan_motion = 0.01 * ones
    nan_motion[:, 2] = np.nan  # no real motion at h = 3 in any window
    bad = rollout_table(
        {"psnr": psnr_dip, "moving_mse": nan_motion},
        {"psnr": 25 * ones, "moving_mse": 0.02 * ones},
        {"psnr": 20 * ones, "moving_mse": 0.05 * ones},
    )
    verdict = check_acceptance(bad)
    assert verdict["psnr_not_below_copy"] is False and verdict["moving_mse_below_copy"] is False
    assert verdict["action_sensitive"] is False and verdict["all"] is False
    summary = acceptance_summary(bad)
    assert "fails at h = 15" in summary and "fails at h = 3" in summary

    short = rollout_table({"psnr": ones[:, :5], "moving_mse": ones[:, :5]}, {"psnr": ones[:, :5],
                          "moving_mse": ones[:, :5]}, {"psnr": ones[:, :5], "moving_mse": ones[:, :5]})  # fmt: skip
    with pytest.raises(ValueError, match="h = 1..15"):
        check_acceptance(short)
    assert check_acceptance(short, max_horizon=5)["psnr_not_below_copy"] is True
    with pytest.raises(ValueError, match="lacks columns"):
        check_acceptance(rollout_table({"psnr": ones}))


def test_windows_that_reach_an_episode_end_score_its_last_step(tmp_path) -> None:
    """Procgen-style episodes end on a rewarded step without a frame: only windows reaching the end can hold it."""
    ends = TrajectoryStore(tmp_path / "ends", create=True)
    rng = np.random.default_rng(0)
    T = 24
    for _ in range(6):
        rewards, term = np.zeros(T, np.float32), np.zeros(T, bool)
        rewards[-1], term[-1] = 10.0, True
        ends.add_episode(rng.integers(0, 256, (T, 64, 64, 3), dtype=np.uint8), rng.integers(0, 4, T), rewards, term,
                         np.zeros(T, bool), env_id="ALE/Breakout-v5", action_meanings=MEANINGS,
                         final_frame_known=False)
    ids = ends.episode_ids()
    inside = sample_eval_clips(ends, ids, K, H, 64, np.random.default_rng(0), replace=True)
    assert inside["mask"].all() and not inside["rewards"].any()  # a window inside its episode never holds the end
    reach = sample_eval_clips(ends, ids, K, H, 64, np.random.default_rng(0), replace=True, reach_end=True)
    paid = reach["rewards"][:, K - 1:] != 0
    assert reach["rewards"].max() == 10.0 and (~reach["mask"]).any()
    assert len(set(np.argmax(paid, axis=1)[paid.any(axis=1)].tolist())) > 3  # the end falls at many horizons
    assert (reach["step_mask"] >= reach["mask"][:, 1:]).all()  # the frameless last step is a step of the episode

    clips = _downsample(reach)
    sim = make_sim(clips["frames"][:, :K], clips["actions"][:, : K - 1])
    result = evaluate_held_out(sim, clips, horizon=H, generator=torch.Generator().manual_seed(0), shuffle_rng=0,
                               events=True, keep_partial=True)
    assert result.num_clips == 64 and result.num_dropped == 0
    assert result.num_partial == int((~clips["mask"].all(axis=1)).sum()) > 0
    assert f"{result.num_partial} windows reach past their episode's end" in result.to_markdown()
    assert result.events.overall("reward")["real"] == int(paid.sum())  # every reachable end is scored
    psnr = result.metrics["model"]["psnr"]
    assert np.isnan(psnr[~clips["mask"][:, K:]]).all() and not np.isnan(psnr[clips["mask"][:, K:]]).any()
    assert all(np.isfinite(v) for v in result.table.column("psnr copy"))  # every horizon keeps real frames
    # without keep_partial the windows that cross the end are dropped, as before
    dropped = evaluate_held_out(sim, clips, horizon=H, generator=torch.Generator().manual_seed(0), shuffle_rng=0,
                                one_step_rewards=False)
    assert dropped.num_dropped == int((~clips["mask"].all(axis=1)).sum()) > 0
