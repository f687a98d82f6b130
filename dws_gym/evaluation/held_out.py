"""The held-out table: open-loop rollouts of held-out windows next to copying the last frame and shuffled actions.

:func:`evaluate_held_out` scores the dreamed frames with PSNR, SSIM, full-frame and moving-region MSE per horizon,
next to the copy-last-frame baseline and to rollouts under another clip's actions, and the reward head on one-step
transitions and over the rollout (:class:`EvalResult`). :func:`sample_eval_clips` and :func:`held_out_windows` draw
the windows from the held-out episodes of a trajectory store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from dws_gym.data import env_episodes, split_episodes
from dws_gym.evaluation.acceptance import (
    ACCEPTANCE_HORIZON,
    _covers_acceptance,
    acceptance_summary,
    check_acceptance,
    check_event_acceptance,
    event_acceptance_summary,
)
from dws_gym.evaluation.closed_loop import ClosedLoopResult
from dws_gym.evaluation.events import EVENT_TOLERANCE, EventResult, score_events
from dws_gym.evaluation.open_loop import (
    ArrayLike,
    _as_numpy,
    _check_batch_size,
    _check_clips,
    _check_positive_int,
    _table_dict,
    open_loop_rollout,
)
from dws_gym.metrics import (
    HeldOutTable,
    moving_region_mse,
    psnr,
    reward_termination_table,
    rollout_table,
    shuffle_actions_across_clips,
    ssim,
)

if TYPE_CHECKING:
    from dws_gym.data import TrajectoryStore
    from dws_gym.simulator import Simulator

__all__ = [
    "FRAME_METRICS",
    "EvalResult",
    "evaluate_held_out",
    "frame_metrics",
    "held_out_windows",
    "sample_eval_clips",
]

ShuffleRng = Union[np.random.Generator, torch.Generator, int, None]

#: Frame-metric names, in table order (all per sample and horizon).
FRAME_METRICS: tuple[str, ...] = ("psnr", "ssim", "mse", "moving_mse")
# Samples scored at once by frame_metrics: the metrics work in float64, 8x the uint8 size.
_METRIC_CHUNK = 64


def _one_step_predictions(
    sim: Simulator,
    frames: np.ndarray,
    actions: np.ndarray,
    *,
    generator: torch.Generator | None,
    batch_size: int | None,
    steps: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reward / termination of the simulator's own one-step transitions at every step of every window.

    For window position ``j`` the real frames ``j .. j + K - 1`` are the context and the logged action
    ``actions[:, j + K - 1]`` is stepped once. Returns ``(rewards float32 (N, T), terminated bool (N, T))``.
    """
    k = sim.context_frames
    horizon = frames.shape[1] - k
    n = frames.shape[0]
    rewards = np.empty((n, horizon), dtype=np.float32)
    terminated = np.empty((n, horizon), dtype=bool)
    chunk = n if batch_size is None else min(batch_size, n)
    for j in range(horizon):
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            state = sim.init_state(frames[a:b, j : j + k], actions[a:b, j : j + k - 1])
            _, reward, term, _ = sim.step(state, actions[a:b, j + k - 1], generator=generator, steps=steps)
            rewards[a:b, j] = reward.float().cpu().numpy()
            terminated[a:b, j] = term.cpu().numpy()
    return rewards, terminated


# ---------------------------------------------------------------------------------------------- metrics


def frame_metrics(pred: ArrayLike, target: ArrayLike, prev_target: ArrayLike) -> dict[str, np.ndarray]:
    """Per-sample, per-horizon frame metrics of predicted frames against real ones.

    Args:
        pred: uint8 ``(N, T, H, W, 3)`` predicted frames ``x̂_{t+h}``, ``h = 1..T``.
        target: uint8 ``(N, T, H, W, 3)`` real frames ``x_{t+h}``.
        prev_target: uint8 ``(N, T, H, W, 3)`` real frames ``x_{t+h-1}`` (the motion mask's reference; for
            ``h = 1`` the last context frame).

    Returns:
        float64 ``(N, T)`` arrays: ``psnr`` (dB, ``inf`` for exact frames), ``ssim``, ``mse`` (full frame, ``[0, 1]``
        pixel units), ``moving_mse`` (NaN where the real frame did not move) and ``moving_fraction``. Computed in
        chunks of samples so the float64 intermediates stay small.
    """
    pred, target, prev_target = (_as_numpy(x, name) for x, name in
                                 ((pred, "pred"), (target, "target"), (prev_target, "prev_target")))  # fmt: skip
    if not (pred.shape == target.shape == prev_target.shape) or pred.ndim != 5:
        raise ValueError(
            f"pred, target and prev_target must all be (N, T, H, W, 3), got {pred.shape}, {target.shape}, "
            f"{prev_target.shape}"
        )
    n, horizon = pred.shape[:2]
    out = {name: np.empty((n, horizon), dtype=np.float64) for name in (*FRAME_METRICS, "moving_fraction")}
    for a in range(0, n, _METRIC_CHUNK):
        b = min(a + _METRIC_CHUNK, n)
        p, t, pt = (np.ascontiguousarray(x[a:b]) for x in (pred, target, prev_target))
        diff = p.astype(np.float64) / 255.0 - t.astype(np.float64) / 255.0
        out["mse"][a:b] = np.mean(diff * diff, axis=(-3, -2, -1))
        out["psnr"][a:b] = psnr(p, t)
        out["ssim"][a:b] = ssim(p, t)
        moving = moving_region_mse(p, t, pt)
        out["moving_mse"][a:b] = moving.mse
        out["moving_fraction"][a:b] = moving.fraction
    return out


# ----------------------------------------------------------------------------------------- the result


@dataclass
class EvalResult:
    """Everything :func:`evaluate_held_out` measured.

    Attributes:
        table: Per-horizon table (:func:`dws_gym.metrics.rollout_table`): columns ``h``, then ``psnr``, ``ssim``,
            ``mse``, ``moving_mse`` each for ``model`` / ``copy`` / ``shuffled``, then ``action_sensitivity``
            (``1 - moving_mse model / moving_mse shuffled``); rows ``h = 1..horizon`` and a ``mean`` row.
        reward_one_step: Reward-sign / termination precision-recall of the simulator's one-step transitions (every
            step of every window), or ``None`` when the clips carry no rewards or it was switched off.
        reward_rollout: The same over the open-loop rollout under the true actions (``None`` without rewards).
        horizon: ``T``, steps dreamed per clip.
        context_frames: ``K``.
        num_clips: Windows evaluated.
        num_dropped: Windows of the input left out because part of them lay past an episode end.
        num_partial: Windows kept although they reach past their episode's end (``keep_partial``): their frames
            there are out of the frame metrics, their steps up to the end are scored.
        metrics: ``{"model" | "copy" | "shuffled": {metric: float64 (N, T)}}`` per-sample values (see
            :func:`frame_metrics`; ``moving_fraction`` is shared by all three and kept under ``"model"`` only).
        arrays: Raw arrays: ``rollout_rewards`` / ``rollout_terminated`` ``(N, T)`` (true actions),
            ``shuffled_rewards`` / ``shuffled_terminated``, ``one_step_rewards`` / ``one_step_terminated`` (when
            computed), ``true_rewards`` / ``true_terminated`` (when given), ``actions`` ``(N, T)`` and
            ``shuffled_actions``, ``perm`` (``shuffled_actions[i] = actions[perm[i]]``), ``episode_id`` / ``start``
            (when given), and ``frames`` / ``shuffled_frames`` uint8 ``(N, T, H, W, 3)`` when ``keep_frames``.
        events: Reward / termination events of the true-action rollout (:class:`EventResult`), when asked for.
        closed_loop: Closed-loop returns, real vs dream (:class:`ClosedLoopResult`), when a caller attached them
            (:func:`~dws_gym.evaluation.closed_loop_returns`; ``python -m dws_gym.evaluation`` does).
    """

    table: HeldOutTable
    reward_one_step: HeldOutTable | None
    reward_rollout: HeldOutTable | None
    horizon: int
    context_frames: int
    num_clips: int
    num_dropped: int = 0
    num_partial: int = 0
    metrics: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    events: EventResult | None = None
    closed_loop: ClosedLoopResult | None = None

    def acceptance(self, **kwargs: Any) -> dict[str, bool]:
        """:func:`check_acceptance` of :attr:`table` (keyword arguments are passed on)."""
        return check_acceptance(self.table, **kwargs)

    def event_acceptance(self, **kwargs: Any) -> dict[str, bool] | None:
        """:func:`check_event_acceptance` of :attr:`events` and :attr:`closed_loop` (``None`` without either)."""
        if self.events is None and self.closed_loop is None:
            return None
        return check_event_acceptance(self.events, self.closed_loop, **kwargs)

    def to_markdown(self) -> str:
        """The frame table, the reward tables and the acceptance summary as markdown (for the model card)."""
        parts = [
            f"{self.num_clips} held-out windows, context {self.context_frames} real frames, {self.horizon} open-loop "
            "steps under the logged actions. `copy` repeats the last context frame; `shuffled` gives each clip "
            "another clip's actions; moving region = pixels where the real frame changes by > 0.05."
            + (f" {self.num_dropped} windows crossing an episode end were left out." if self.num_dropped else "")
            + (f" {self.num_partial} windows reach past their episode's end, so that its last step (a game over, a "
               "coin) is scored at any horizon; their frames past the end are left out of the frame metrics."
               if self.num_partial else ""),
            "",
            self.table.to_markdown(),
        ]
        for table in (self.reward_one_step, self.reward_rollout):
            if table is not None:
                parts += ["", table.to_markdown()]
        if _covers_acceptance(self.table):
            parts += ["", acceptance_summary(self.table)]
        for extra in (self.events, self.closed_loop):
            if extra is not None:
                parts += ["", extra.to_markdown()]
        if self.events is not None or self.closed_loop is not None:
            parts += ["", event_acceptance_summary(self.events, self.closed_loop)]
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (tables, counts, acceptance, markdown); NaN / inf become ``None``.

        The ``table_markdown`` entry is what :meth:`Simulator.model_card` prints under "Fidelity".
        """
        out: dict[str, Any] = {
            "horizon": self.horizon,
            "context_frames": self.context_frames,
            "num_clips": self.num_clips,
            "num_dropped": self.num_dropped,
            "num_partial": self.num_partial,
            "table": _table_dict(self.table),
            "reward_one_step": _table_dict(self.reward_one_step),
            "reward_rollout": _table_dict(self.reward_rollout),
            "acceptance": check_acceptance(self.table) if _covers_acceptance(self.table) else None,
            "table_markdown": self.to_markdown(),
        }
        if self.events is not None:
            out["events"] = self.events.to_dict()
        if self.closed_loop is not None:
            out["closed_loop"] = self.closed_loop.to_dict()
        if self.events is not None or self.closed_loop is not None:
            out["event_acceptance"] = self.event_acceptance()
        return out


# --------------------------------------------------------------------------------------- evaluation


def evaluate_held_out(
    sim: Simulator,
    clips: Mapping[str, Any],
    *,
    horizon: int = ACCEPTANCE_HORIZON,
    generator: torch.Generator | None,
    shuffle_rng: ShuffleRng,
    batch_size: int | None = None,
    steps: int | None = None,
    one_step_rewards: bool = True,
    keep_frames: bool = False,
    events: bool = False,
    event_tolerance: int = EVENT_TOLERANCE,
    event_match_sign: bool = False,
    keep_partial: bool = False,
) -> EvalResult:
    """Score open-loop rollouts of held-out windows against copying the last frame and shuffled actions.

    Only windows whose ``K + horizon`` frames are all real (``clips["mask"]`` all True on them) are evaluated;
    the others are dropped and counted in :attr:`EvalResult.num_dropped` (a rollout past an episode end has no
    real frame to compare with). :func:`sample_eval_clips` draws only full windows. Frames beyond ``K + horizon``
    are ignored. With ``keep_partial`` a window that reaches past its episode's end is kept when its ``K`` context
    frames are real: its frame metrics are NaN (left out of every mean) from the end on, and its rewards and
    terminations count up to the episode's last step (``clips["step_mask"]`` when given, as
    ``sample_eval_clips(..., reach_end=True)`` returns it, includes a last step without a frame, e.g. Procgen's
    coin), so an episode's end can be scored at every horizon (from ``h = 2`` where its frame is unknown: a
    window needs one real frame after its context).

    The true-action and shuffled-action rollouts start from the same generator state, so with a seeded generator
    they share their sampling noise and differ only through the actions. Predicted terminations do not stop a
    rollout.

    Args:
        sim: The simulator (any backbone behind the step protocol).
        clips: A dict as returned by ``ClipDataset.get_batch`` / ``.sample`` or :func:`sample_eval_clips`:
            ``frames`` uint8 ``(N, L, H, W, 3)`` and ``actions`` ``(N, L - 1)`` with ``L >= K + horizon``;
            optional ``rewards`` / ``terminated`` ``(N, L - 1)`` (both or neither; without them there are no reward
            tables), ``mask`` bool ``(N, L)`` (default all True), ``episode_id`` / ``start`` ``(N,)``.
        horizon: ``T``, steps to dream per window.
        generator: Sampling noise (``None``: torch's global generator, and then the two rollouts do not share
            noise). Seed it for reproducible numbers.
        shuffle_rng: Randomness of the across-clip action permutation (numpy or torch generator, int seed, or
            ``None`` for fresh entropy); see :func:`dws_gym.metrics.shuffle_actions_across_clips`.
        batch_size: Clips per ``sim.step`` call (``None``: all at once).
        steps: Sampling steps per frame (``None``: the simulator's default).
        one_step_rewards: Also step every window position once from real context to score the reward head on
            one-step transitions (``T`` more batched steps); ignored when the clips carry no rewards.
        keep_frames: Keep the dreamed frames in :attr:`EvalResult.arrays`.
        events: Also score the true-action rollout's rewards and terminations as events (:func:`score_events`,
            stored in :attr:`EvalResult.events`); ignored when the clips carry no rewards.
        event_tolerance, event_match_sign: The event matching's tolerance in steps and sign rule.
        keep_partial: Keep windows that reach past their episode's end (see above).

    Returns:
        :class:`EvalResult`.

    Raises:
        ValueError: malformed clips, fewer than two full windows (shuffling needs another clip to take actions
            from), or a bad ``horizon`` / ``batch_size``.
    """
    horizon = _check_positive_int("horizon", horizon)
    batch_size = _check_batch_size(batch_size)
    data = _check_clips(sim, clips, horizon)
    k = sim.context_frames
    full = data["mask"][:, :k].all(axis=1) if keep_partial else data["mask"].all(axis=1)
    num_dropped = int((~full).sum())
    if num_dropped:
        data = {key: value[full] for key, value in data.items()}
    n = int(data["frames"].shape[0])
    if n < 2:
        raise ValueError(
            f"{n} window(s) lie fully inside their episodes ({num_dropped} dropped for crossing an episode end); "
            "evaluation needs at least 2, since shuffled actions come from another clip"
        )
    # which dreamed frames have a real one to compare with, and which dreamed steps are steps of the episode
    real_frame = data["mask"][:, k:]
    real_step = data["step_mask"] if "step_mask" in data else data["mask"][:, 1:]
    real_step = np.asarray(real_step, dtype=bool)[:, k - 1:]
    frames, actions = data["frames"], data["actions"]
    context, context_actions = frames[:, :k], actions[:, : k - 1]
    future = actions[:, k - 1 :]
    target, prev_target = frames[:, k:], frames[:, k - 1 : -1]

    shuffled_actions, perm = shuffle_actions_across_clips(future, shuffle_rng)
    start_state = generator.get_state() if generator is not None else None
    rollout = open_loop_rollout(
        sim, context, context_actions, future, generator=generator, batch_size=batch_size, steps=steps
    )
    if generator is not None:
        generator.set_state(start_state)  # same noise for the shuffled rollout: only the actions differ
    shuffled = open_loop_rollout(
        sim, context, context_actions, shuffled_actions, generator=generator, batch_size=batch_size, steps=steps
    )
    copy = np.broadcast_to(frames[:, k - 1 : k], target.shape)

    model_metrics = frame_metrics(rollout["frames"], target, prev_target)
    copy_metrics = frame_metrics(copy, target, prev_target)
    shuffled_metrics = frame_metrics(shuffled["frames"], target, prev_target)
    for extra in (copy_metrics, shuffled_metrics):
        extra.pop("moving_fraction")  # identical for all three: it depends on the real frames only
    if not real_frame.all():  # past an episode's end there is no real frame: out of every mean
        for metrics in (model_metrics, copy_metrics, shuffled_metrics):
            for values in metrics.values():
                values[~real_frame] = np.nan

    table = rollout_table(
        {name: model_metrics[name] for name in FRAME_METRICS},
        {name: copy_metrics[name] for name in FRAME_METRICS},
        {name: shuffled_metrics[name] for name in FRAME_METRICS},
        sensitivity_metric="moving_mse",
        title=f"Held-out open-loop rollouts ({n} windows, context {k}, h = 1..{horizon})",
    )

    arrays: dict[str, np.ndarray] = {
        "rollout_rewards": rollout["rewards"],
        "rollout_terminated": rollout["terminated"],
        "shuffled_rewards": shuffled["rewards"],
        "shuffled_terminated": shuffled["terminated"],
        "actions": np.asarray(future),
        "shuffled_actions": np.asarray(shuffled_actions),
        "perm": perm,
    }
    for key in ("episode_id", "start"):
        if key in data:
            arrays[key] = data[key]
    if keep_frames:
        arrays["frames"] = rollout["frames"]
        arrays["shuffled_frames"] = shuffled["frames"]

    reward_one_step = reward_rollout = event_result = None
    if "rewards" in data:
        true_rewards = np.where(real_step, data["rewards"][:, k - 1 :], 0).astype(np.float32)
        true_terminated = data["terminated"][:, k - 1 :].astype(bool) & real_step
        # the dream goes on past an episode's end; what it pays there belongs to no real step
        dream_rewards = np.where(real_step, rollout["rewards"], 0).astype(np.float32)
        dream_terminated = np.asarray(rollout["terminated"], dtype=bool) & real_step
        arrays["true_rewards"], arrays["true_terminated"] = true_rewards, true_terminated
        reward_rollout = reward_termination_table(
            dream_rewards[real_step], true_rewards[real_step], dream_terminated[real_step], true_terminated[real_step],
            title=f"Reward sign / termination over the open-loop rollout (h = 1..{horizon})",
        )  # fmt: skip
        if events:
            event_result = score_events(dream_rewards, true_rewards, dream_terminated, true_terminated,
                                        tolerance=event_tolerance, match_sign=event_match_sign)  # fmt: skip
        if one_step_rewards:
            one_r, one_t = _one_step_predictions(
                sim, frames, actions, generator=generator, batch_size=batch_size, steps=steps
            )
            arrays["one_step_rewards"], arrays["one_step_terminated"] = one_r, one_t
            # a one-step transition needs a real context: the step right after the context's last real frame
            one_ok = real_step & np.concatenate([np.ones((n, 1), bool), real_frame[:, :-1]], axis=1)
            reward_one_step = reward_termination_table(
                one_r[one_ok], true_rewards[one_ok], one_t[one_ok], true_terminated[one_ok],
                title="Reward sign / termination of one-step transitions (real context, simulated next frame)",
            )  # fmt: skip

    return EvalResult(
        table=table,
        reward_one_step=reward_one_step,
        reward_rollout=reward_rollout,
        horizon=horizon,
        context_frames=k,
        num_clips=n,
        num_dropped=num_dropped,
        num_partial=int((~real_frame.all(axis=1)).sum()),
        metrics={"model": model_metrics, "copy": copy_metrics, "shuffled": shuffled_metrics},
        arrays=arrays,
        events=event_result,
    )


# ------------------------------------------------------------------------------------- data selection


def sample_eval_clips(
    store: TrajectoryStore,
    episode_ids: Sequence[int],
    context: int,
    horizon: int,
    n: int,
    rng: np.random.Generator,
    *,
    replace: bool = False,
    reach_end: bool = False,
) -> dict[str, np.ndarray]:
    """Draw ``n`` windows of ``context + horizon`` frames lying entirely inside the given (held-out) episodes.

    Unlike ``ClipDataset.sample``, no window reaches past an episode end (unless ``reach_end``): every returned
    ``mask`` is all True, so every frame of a rollout has a real frame to be compared with.

    Args:
        store: The trajectory store.
        episode_ids: Episodes to draw from (e.g. the held-out ids of :func:`dws_gym.data.split_episodes`).
        context: ``K``, the simulator's context frames.
        horizon: ``T``, frames to dream after the context.
        n: Windows to draw.
        rng: ``numpy.random.Generator`` (the only randomness).
        replace: Draw with replacement; by default the ``n`` windows are distinct.
        reach_end: Also draw windows that reach past their episode's end (the ``K`` context frames real, at least
            one real step after them); ``mask`` is then False from the end on, and ``step_mask`` ``(n, K + T - 1)``
            says which steps are the episode's, the last one included where its frame is unknown (Procgen), whose
            reward and flags are then filled in. For scoring episode ends (``evaluate_held_out(keep_partial=True)``).

    Returns:
        The dict of ``ClipDataset.get_batch``: ``frames`` uint8 ``(n, K + T, H, W, 3)``, ``actions``, ``rewards``,
        ``terminated``, ``truncated``, ``life_lost`` ``(n, K + T - 1)``, ``mask`` ``(n, K + T)`` (all True),
        ``episode_id`` and ``start`` ``(n,)``.

    Raises:
        ValueError: no episodes, no window that fits, or more distinct windows asked for than exist.
    """
    context = _check_positive_int("context", context)
    horizon = _check_positive_int("horizon", horizon)
    n = _check_positive_int("n", n)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
    ids = [int(i) for i in episode_ids]
    if not ids:
        raise ValueError("episode_ids is empty; pass the held-out episode ids (see split_episodes)")
    dataset = store.clips(context, horizon, episode_ids=ids)
    length = context + horizon
    num_frames = {i: store.meta(i).num_frames for i in ids}
    if len(dataset):
        eps, starts = dataset.locate(np.arange(len(dataset)))
        frames_of = np.asarray([num_frames[int(e)] for e in eps], dtype=np.int64)
        valid = np.flatnonzero(starts + (context + 1 if reach_end else length) <= frames_of)
    else:
        valid = np.zeros(0, dtype=np.int64)
    if valid.size == 0:
        raise ValueError(
            f"no window of {length} frames (context {context} + horizon {horizon}) fits inside episodes {ids}; "
            f"their longest has {max(num_frames.values())} frames — use more or longer episodes or a shorter horizon"
        )
    if not replace and n > valid.size:
        raise ValueError(
            f"asked for {n} distinct windows but episodes {ids} hold only {valid.size} full windows of {length} "
            "frames; lower n or pass replace=True"
        )
    # with reach_end, an episode's frameless last step keeps its reward and its end (``step_mask``)
    batch = dataset.get_batch(rng.choice(valid, size=n, replace=replace), frameless_final=reach_end)
    if not reach_end and not batch["mask"].all():  # guards the window arithmetic above against a change of ClipDataset's indexing
        raise RuntimeError("sample_eval_clips drew a window past an episode end; ClipDataset indexing changed")
    return batch


def held_out_windows(store: TrajectoryStore, env_id: str, context: int, horizon: int, n: int,
                     held_out_fraction: float, seed: int, *, reach_end: bool = False) -> dict[str, np.ndarray]:
    """``n`` windows of ``context + horizon`` real frames from the held-out episodes of ``env_id`` in ``store``
    (``reach_end``: also windows that reach past an episode's end, see :func:`sample_eval_clips`)."""
    _, held = split_episodes(store, held_out_fraction, episode_ids=env_episodes(store, env_id))
    rng = np.random.default_rng(seed)
    return sample_eval_clips(store, held, context, horizon, n, rng, replace=True, reach_end=reach_end)
