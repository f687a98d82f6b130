"""Held-out evaluation of a simulator: open-loop rollouts next to the copy-last-frame baseline.

The table this module produces answers three questions about a world simulator, on windows of real episodes the
simulator never trained on:

1. **Fidelity.** Starting from ``K`` real context frames, the simulator dreams ``T`` steps open loop under the
   *logged* actions (its own frames are fed back, never the real ones). Each dreamed frame ``x̂_{t+h}`` is scored
   against the real ``x_{t+h}`` with PSNR, SSIM and full-frame MSE for ``h = 1..T``.
2. **Motion.** The moving-region MSE restricts the error to the pixels where the *real* frame changed,
   ``max_c |x_{t+h} - x_{t+h-1}| > 0.05`` (:func:`dws_gym.metrics.moving_region_mse`); on mostly static games it is
   the number that says whether the ball and paddle move at all.
3. **Action sensitivity.** The same rollouts with each clip given another clip's future actions (shuffled across
   clips, never within time, :func:`dws_gym.metrics.shuffle_actions_across_clips`). A simulator that follows
   actions is closer to the real frames with the true actions than with shuffled ones.

Every metric is reported next to the **copy-last-frame baseline** (the last context frame repeated for every
``h``) on exactly the same frames: a fresh residual flow model predicts that baseline exactly, so beating it is the
first sign of learning, and a model that merely blurs or erases moving objects can beat it on one metric alone,
which is why the three are read together (:func:`check_acceptance`).

Reward / termination: the head's predictions are scored against the logged reward sign and game-over flag twice:
on the simulator's own *one-step* transitions (real context, logged action, the simulator's next frame; every step
of every window) and over the open-loop rollout (dreamed context).

Typical use::

    train_ids, held_out = split_episodes(store, held_out_fraction=0.1)
    clips = sample_eval_clips(store, held_out, context=sim.context_frames, horizon=15, n=256,
                              rng=np.random.default_rng(0))
    result = evaluate_held_out(sim, clips, horizon=15, generator=torch.Generator().manual_seed(0), shuffle_rng=0)
    print(result.to_markdown())
    sim.config.metrics = result.to_dict()       # the model card renders result.to_dict()["table_markdown"]

Events: good frame metrics do not mean the game's events happen. :func:`evaluate_events` (or
``evaluate_held_out(..., events=True)``) matches the rollout's non-zero rewards and terminations with the real ones
within ±1 step (:func:`match_events`) and reports recall and precision per horizon. :func:`closed_loop_returns`
plays the same action sequences in the real env and the dream from the same real start and compares the returns
(mean ± std, per-episode correlation). :func:`check_event_acceptance` turns both into named booleans::

    result.events = evaluate_events(sim, clips, horizon=15, generator=torch.Generator().manual_seed(0))
    result.closed_loop = closed_loop_returns(sim, "ALE/Breakout-v5", episodes=100, steps=100, seed=0)
    check_event_acceptance(result.events, result.closed_loop)   # {"reward_recall": ..., ..., "all": ...}

Everything runs through the simulator's step protocol (DESIGN D2: ``init_state`` / ``step``), so any backbone
is evaluated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

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
    "ACCEPTANCE_HORIZON",
    "SENSITIVITY_HORIZON",
    "SENSITIVITY_MARGIN",
    "FRAME_METRICS",
    "EVENT_TOLERANCE",
    "MIN_REWARD_RECALL",
    "MIN_REWARD_PRECISION",
    "RETURN_TOLERANCE",
    "MIN_RETURN_CORRELATION",
    "ClosedLoopResult",
    "EvalResult",
    "EventResult",
    "acceptance_summary",
    "check_acceptance",
    "check_action_meanings",
    "check_event_acceptance",
    "closed_loop_returns",
    "event_acceptance_summary",
    "evaluate_events",
    "evaluate_held_out",
    "first_end_step",
    "frame_metrics",
    "lockstep_rollout",
    "match_events",
    "open_loop_rollout",
    "pearson",
    "returns_until_end",
    "sample_eval_clips",
    "score_events",
    "split_episodes",
]

ArrayLike = Union[np.ndarray, torch.Tensor]
ShuffleRng = Union[np.random.Generator, torch.Generator, int, None]

#: Horizons ``1..ACCEPTANCE_HORIZON`` on which PSNR and moving-region MSE must not lose to copying.
ACCEPTANCE_HORIZON: int = 15
#: Horizons ``1..SENSITIVITY_HORIZON`` on which true actions must beat shuffled ones.
SENSITIVITY_HORIZON: int = 5
#: Required relative reduction of moving-region MSE with true actions versus shuffled actions.
SENSITIVITY_MARGIN: float = 0.2
#: Frame-metric names, in table order (all per sample and horizon).
FRAME_METRICS: tuple[str, ...] = ("psnr", "ssim", "mse", "moving_mse")
# Samples scored at once by frame_metrics: the metrics work in float64, 8x the uint8 size.
_METRIC_CHUNK = 64
#: Steps by which a dreamed event may be early or late and still match a real one.
EVENT_TOLERANCE: int = 1
#: Event acceptance: overall reward-event recall and precision of the open-loop rollout must reach these.
MIN_REWARD_RECALL: float = 0.6
MIN_REWARD_PRECISION: float = 0.5
#: Closed-loop acceptance: mean dream return within this fraction of the mean real return ...
RETURN_TOLERANCE: float = 0.3
#: ... and per-episode Pearson correlation of real and dream returns at least this.
MIN_RETURN_CORRELATION: float = 0.5


# ------------------------------------------------------------------------------------------ input helpers


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_batch_size(batch_size: int | None) -> int | None:
    return None if batch_size is None else _check_positive_int("batch_size", batch_size)


# --------------------------------------------------------------------------------------------- rollouts


def open_loop_rollout(
    sim: Simulator,
    context_frames: ArrayLike,
    context_actions: ArrayLike,
    future_actions: ArrayLike,
    *,
    generator: torch.Generator | None,
    batch_size: int | None = None,
    steps: int | None = None,
) -> dict[str, np.ndarray]:
    """Dream ``T`` steps from real context clips under given actions, feeding the simulator its own frames.

    Uses only the step protocol (``sim.init_state`` then ``T`` calls of ``sim.step``). With ``batch_size`` the
    ``N`` clips are stepped in chunks of at most that many (bounding the model's activation memory); the loop is
    step-major, so at every step the chunks draw their noise from ``generator`` in clip order, as one batch would
    (with a CPU generator, chunking then typically changes the frames only by floating-point rounding of the
    differently sized matmuls). Results are exactly reproducible for the same generator state, inputs, device and
    ``batch_size``.

    Args:
        sim: The simulator.
        context_frames: uint8 ``(N, K, H, W, 3)`` real frames, ``K = sim.context_frames``, oldest first.
        context_actions: ``(N, K - 1)`` integer actions between the context frames.
        future_actions: ``(N, T)`` integer actions; ``future_actions[:, h - 1]`` produces dreamed frame ``h``.
        generator: The only source of randomness (a CPU generator works for any simulator device); ``None`` uses
            torch's global generator.
        batch_size: Clips per ``sim.step`` call (``None``: all ``N`` at once).
        steps: Sampling (Euler) steps per frame; ``None`` uses the simulator's default.

    Returns:
        ``{"frames": uint8 (N, T, H, W, 3), "rewards": float32 (N, T), "terminated": bool (N, T)}`` as numpy
        arrays on the CPU. A predicted termination does not stop the rollout (it is open loop; the flag is
        recorded and stepping continues).

    Raises:
        ValueError: shapes that do not fit together or the simulator, or actions outside its action space.
    """
    batch_size = _check_batch_size(batch_size)
    fut = future_actions if isinstance(future_actions, torch.Tensor) else np.asarray(future_actions)
    if fut.ndim != 2 or fut.shape[1] < 1:
        raise ValueError(f"future_actions must be (N, T) with T >= 1 integer actions, got shape {tuple(fut.shape)}")
    if not isinstance(context_frames, (np.ndarray, torch.Tensor)) or context_frames.ndim != 5:
        shape = tuple(context_frames.shape) if hasattr(context_frames, "shape") else type(context_frames).__name__
        raise ValueError(f"context_frames must be a uint8 (N, K, H, W, 3) array or tensor, got {shape}")
    n, horizon = int(fut.shape[0]), int(fut.shape[1])
    if n == 0:
        raise ValueError("no clips to roll out: context_frames and future_actions are empty")
    for name, value in (("context_frames", context_frames), ("context_actions", context_actions)):
        count = value.shape[0] if hasattr(value, "shape") and len(value.shape) else None
        if count != n:
            raise ValueError(
                f"{name} hold {count} clips but future_actions {n}; pass one context and one action sequence per clip"
            )
    chunk = n if batch_size is None else min(batch_size, n)
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    # init_state validates the frames (dtype, K, frame shape) and the context actions for every chunk up front.
    states = [sim.init_state(context_frames[a:b], context_actions[a:b]) for a, b in bounds]
    future = [sim.check_actions(fut[a:b], (b - a, horizon), "future_actions") for a, b in bounds]
    height, width, channels = (int(s) for s in sim.config.obs_shape)
    frames = np.empty((n, horizon, height, width, channels), dtype=np.uint8)
    rewards = np.empty((n, horizon), dtype=np.float32)
    terminated = np.empty((n, horizon), dtype=bool)
    for h in range(horizon):
        for i, (a, b) in enumerate(bounds):
            frame, reward, term, states[i] = sim.step(states[i], future[i][:, h], generator=generator, steps=steps)
            frames[a:b, h] = frame.cpu().numpy()
            rewards[a:b, h] = reward.float().cpu().numpy()
            terminated[a:b, h] = term.cpu().numpy()
    return {"frames": frames, "rewards": rewards, "terminated": terminated}


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


def _json_value(value: Any) -> Any:
    """Python scalars for numpy ones; ``None`` for NaN / inf (strict JSON has neither)."""
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


def _table_dict(table: HeldOutTable | None) -> dict[str, Any] | None:
    if table is None:
        return None
    rows = [{k: _json_value(v) for k, v in row.items()} for row in table.rows]
    return {"title": table.title, "columns": list(table.columns), "rows": rows}


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
        metrics: ``{"model" | "copy" | "shuffled": {metric: float64 (N, T)}}`` per-sample values (see
            :func:`frame_metrics`; ``moving_fraction`` is shared by all three and kept under ``"model"`` only).
        arrays: Raw arrays: ``rollout_rewards`` / ``rollout_terminated`` ``(N, T)`` (true actions),
            ``shuffled_rewards`` / ``shuffled_terminated``, ``one_step_rewards`` / ``one_step_terminated`` (when
            computed), ``true_rewards`` / ``true_terminated`` (when given), ``actions`` ``(N, T)`` and
            ``shuffled_actions``, ``perm`` (``shuffled_actions[i] = actions[perm[i]]``), ``episode_id`` / ``start``
            (when given), and ``frames`` / ``shuffled_frames`` uint8 ``(N, T, H, W, 3)`` when ``keep_frames``.
        events: Reward / termination events of the true-action rollout (:class:`EventResult`), when asked for.
        closed_loop: Closed-loop returns, real vs dream (:class:`ClosedLoopResult`), when a caller attached them
            (:func:`closed_loop_returns`; ``python -m dws_gym.evaluate`` does).
    """

    table: HeldOutTable
    reward_one_step: HeldOutTable | None
    reward_rollout: HeldOutTable | None
    horizon: int
    context_frames: int
    num_clips: int
    num_dropped: int = 0
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
            + (f" {self.num_dropped} windows crossing an episode end were left out." if self.num_dropped else ""),
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


def _check_clips(sim: Simulator, clips: Mapping[str, Any], horizon: int) -> dict[str, np.ndarray]:
    """Validate a clip batch, cut it to ``K + horizon`` frames and return numpy arrays."""
    if not isinstance(clips, Mapping):
        raise ValueError(f"clips must be a dict from ClipDataset.get_batch / sample_eval_clips, got {type(clips)}")
    for key in ("frames", "actions"):
        if key not in clips:
            raise ValueError(f"clips has no {key!r}; pass the dict from ClipDataset.get_batch or sample_eval_clips")
    k = sim.context_frames
    need = k + horizon
    frames = _as_numpy(clips["frames"], "clips['frames']")
    shape = tuple(int(s) for s in sim.config.obs_shape)
    if frames.dtype != np.uint8 or frames.ndim != 5 or tuple(frames.shape[2:]) != shape:
        raise ValueError(
            f"clips['frames'] must be uint8 (N, L, {', '.join(map(str, shape))}), got {frames.dtype} {frames.shape}"
        )
    n, length = frames.shape[:2]
    if length < need:
        raise ValueError(
            f"clips hold {length} frames but context {k} + horizon {horizon} = {need} are needed; sample windows "
            f"with context={k}, horizon>={horizon} or lower horizon"
        )
    out: dict[str, np.ndarray] = {"frames": frames[:, :need]}
    actions = _as_numpy(clips["actions"], "clips['actions']")
    if actions.ndim != 2 or actions.shape != (n, length - 1):
        raise ValueError(f"clips['actions'] must be ({n}, {length - 1}) integer actions, got {actions.shape}")
    out["actions"] = actions[:, : need - 1]
    for key in ("rewards", "terminated"):
        if key in clips and clips[key] is not None:
            arr = _as_numpy(clips[key], f"clips[{key!r}]")
            if arr.shape != (n, length - 1):
                raise ValueError(f"clips[{key!r}] must be ({n}, {length - 1}), got {arr.shape}")
            out[key] = arr[:, : need - 1]
    if ("rewards" in out) != ("terminated" in out):
        raise ValueError("clips must carry both 'rewards' and 'terminated' or neither")
    if "mask" in clips and clips["mask"] is not None:
        mask = _as_numpy(clips["mask"], "clips['mask']").astype(bool)
        if mask.shape != (n, length):
            raise ValueError(f"clips['mask'] must be bool ({n}, {length}), got {mask.shape}")
        out["mask"] = mask[:, :need]
    else:
        out["mask"] = np.ones((n, need), dtype=bool)
    for key in ("episode_id", "start"):
        if key in clips and clips[key] is not None:
            arr = _as_numpy(clips[key], f"clips[{key!r}]").reshape(-1)
            if arr.shape != (n,):
                raise ValueError(f"clips[{key!r}] must hold one entry per clip ({n}), got shape {arr.shape}")
            out[key] = arr
    return out


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
) -> EvalResult:
    """Score open-loop rollouts of held-out windows against copying the last frame and shuffled actions.

    Only windows whose ``K + horizon`` frames are all real (``clips["mask"]`` all True on them) are evaluated;
    the others are dropped and counted in :attr:`EvalResult.num_dropped` (a rollout past an episode end has no
    real frame to compare with). :func:`sample_eval_clips` draws only full windows. Frames beyond ``K + horizon``
    are ignored.

    The true-action and shuffled-action rollouts start from the same generator state, so with a seeded generator
    they share their sampling noise and differ only through the actions. Predicted terminations do not stop a
    rollout.

    Args:
        sim: The simulator (any backbone behind the D2 step protocol).
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

    Returns:
        :class:`EvalResult`.

    Raises:
        ValueError: malformed clips, fewer than two full windows (shuffling needs another clip to take actions
            from), or a bad ``horizon`` / ``batch_size``.
    """
    horizon = _check_positive_int("horizon", horizon)
    batch_size = _check_batch_size(batch_size)
    data = _check_clips(sim, clips, horizon)
    full = data["mask"].all(axis=1)
    num_dropped = int((~full).sum())
    if num_dropped:
        data = {key: value[full] for key, value in data.items()}
    n = int(data["frames"].shape[0])
    if n < 2:
        raise ValueError(
            f"{n} window(s) lie fully inside their episodes ({num_dropped} dropped for crossing an episode end); "
            "evaluation needs at least 2, since shuffled actions come from another clip"
        )
    k = sim.context_frames
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
        true_rewards = data["rewards"][:, k - 1 :].astype(np.float32)
        true_terminated = data["terminated"][:, k - 1 :].astype(bool)
        arrays["true_rewards"], arrays["true_terminated"] = true_rewards, true_terminated
        reward_rollout = reward_termination_table(
            rollout["rewards"], true_rewards, rollout["terminated"], true_terminated,
            title=f"Reward sign / termination over the open-loop rollout (h = 1..{horizon})",
        )  # fmt: skip
        if events:
            event_result = score_events(rollout["rewards"], true_rewards, rollout["terminated"], true_terminated,
                                        tolerance=event_tolerance, match_sign=event_match_sign)  # fmt: skip
        if one_step_rewards:
            one_r, one_t = _one_step_predictions(
                sim, frames, actions, generator=generator, batch_size=batch_size, steps=steps
            )
            arrays["one_step_rewards"], arrays["one_step_terminated"] = one_r, one_t
            reward_one_step = reward_termination_table(
                one_r, true_rewards, one_t, true_terminated,
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
        metrics={"model": model_metrics, "copy": copy_metrics, "shuffled": shuffled_metrics},
        arrays=arrays,
        events=event_result,
    )


# ---------------------------------------------------------------------------------------- acceptance

_REQUIRED_COLUMNS = ("psnr model", "psnr copy", "moving_mse model", "moving_mse copy", "moving_mse shuffled")


def _horizon_rows(table: HeldOutTable) -> dict[int, dict[str, Any]]:
    return {int(row["h"]): row for row in table.rows if isinstance(row.get("h"), (int, np.integer))}


def _covers_acceptance(table: HeldOutTable, max_horizon: int = ACCEPTANCE_HORIZON) -> bool:
    rows = _horizon_rows(table)
    return all(c in table.columns for c in _REQUIRED_COLUMNS) and all(h in rows for h in range(1, max_horizon + 1))


@dataclass(frozen=True)
class _Criterion:
    """One acceptance rule: ``model op scale * reference`` must hold at every horizon in ``values``."""

    rule: str
    reference: str  # "copy" or "shuffled"
    op: str  # ">=", "<" or "<="
    scale: float
    values: list[tuple[int, float, float]]  # (h, model, reference)

    def holds(self, model: float, ref: float) -> bool:
        bound = self.scale * ref
        return {">=": model >= bound, "<": model < bound, "<=": model <= bound}[self.op]  # NaN -> False

    def failing(self) -> list[int]:
        return [h for h, m, r in self.values if not self.holds(m, r)]


def _criteria(
    table: HeldOutTable, max_horizon: int, sensitivity_horizon: int, margin: float
) -> dict[str, _Criterion]:
    if not isinstance(table, HeldOutTable):
        raise ValueError(f"table must be a HeldOutTable (EvalResult.table), got {type(table).__name__}")
    missing = [c for c in _REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"table lacks columns {missing}; pass the table of evaluate_held_out (model, copy and shuffled rollouts)"
        )
    max_horizon = _check_positive_int("max_horizon", max_horizon)
    sensitivity_horizon = _check_positive_int("sensitivity_horizon", sensitivity_horizon)
    if isinstance(margin, bool) or not (isinstance(margin, (int, float)) and 0.0 <= margin < 1.0):
        raise ValueError(f"sensitivity_margin must be a number in [0, 1), got {margin!r}")
    rows = _horizon_rows(table)
    last = max(max_horizon, sensitivity_horizon)
    absent = [h for h in range(1, last + 1) if h not in rows]
    if absent:
        raise ValueError(
            f"table has horizons {sorted(rows)} but acceptance needs h = 1..{last}; evaluate with horizon >= {last} "
            "or lower max_horizon / sensitivity_horizon"
        )

    def values(model: str, ref: str, upto: int) -> list[tuple[int, float, float]]:
        return [(h, float(rows[h][model]), float(rows[h][ref])) for h in range(1, upto + 1)]

    return {
        "psnr_not_below_copy": _Criterion(
            f"full-frame PSNR >= copy-last-frame at h = 1..{max_horizon}",
            "copy", ">=", 1.0, values("psnr model", "psnr copy", max_horizon),
        ),
        "moving_mse_below_copy": _Criterion(
            f"moving-region MSE < copy-last-frame at h = 1..{max_horizon}",
            "copy", "<", 1.0, values("moving_mse model", "moving_mse copy", max_horizon),
        ),
        "action_sensitive": _Criterion(
            f"moving-region MSE with true actions >= {margin:.0%} below shuffled actions at "
            f"h = 1..{sensitivity_horizon}",
            "shuffled", "<=", 1.0 - margin, values("moving_mse model", "moving_mse shuffled", sensitivity_horizon),
        ),
    }  # fmt: skip


def check_acceptance(
    table: HeldOutTable,
    *,
    max_horizon: int = ACCEPTANCE_HORIZON,
    sensitivity_horizon: int = SENSITIVITY_HORIZON,
    sensitivity_margin: float = SENSITIVITY_MARGIN,
) -> dict[str, bool]:
    """The three acceptance criteria of a held-out table (the issue's definition of a usable simulator).

    * ``psnr_not_below_copy``: mean full-frame PSNR of the model ``>=`` the copy-last-frame baseline's at every
      ``h = 1..max_horizon`` (equality passes: a model that copies exactly meets it).
    * ``moving_mse_below_copy``: mean moving-region MSE of the model strictly ``<`` copying's at every
      ``h = 1..max_horizon`` (a copying model ties and fails: it has not learned any motion).
    * ``action_sensitive``: moving-region MSE with the true actions at least ``sensitivity_margin`` (20 %) below
      the shuffled-action rollout's, ``model <= (1 - margin) * shuffled``, at every ``h = 1..sensitivity_horizon``.

    A NaN value (e.g. no real motion at some ``h`` in any window) fails its criterion. ``all`` is True when all
    three hold.

    Args:
        table: :attr:`EvalResult.table` (or any table with the columns ``psnr model``, ``psnr copy``,
            ``moving_mse model``, ``moving_mse copy``, ``moving_mse shuffled`` and integer ``h`` rows).
        max_horizon, sensitivity_horizon, sensitivity_margin: The criteria's horizons and margin.

    Returns:
        ``{"psnr_not_below_copy", "moving_mse_below_copy", "action_sensitive", "all"}`` -> bool.

    Raises:
        ValueError: a table without those columns or without the horizons the criteria look at.
    """
    criteria = _criteria(table, max_horizon, sensitivity_horizon, sensitivity_margin)
    result = {name: not c.failing() for name, c in criteria.items()}
    result["all"] = all(result.values())
    return result


def acceptance_summary(
    table: HeldOutTable,
    *,
    max_horizon: int = ACCEPTANCE_HORIZON,
    sensitivity_horizon: int = SENSITIVITY_HORIZON,
    sensitivity_margin: float = SENSITIVITY_MARGIN,
) -> str:
    """Human-readable verdict of :func:`check_acceptance`: one markdown line per criterion.

    Each line says PASS / FAIL, the rule, the worst horizon (PSNR: the smallest margin over copying in dB;
    moving-region MSE: the largest ratio to the reference) and the horizons where the rule fails.
    """
    criteria = _criteria(table, max_horizon, sensitivity_horizon, sensitivity_margin)
    lines = ["**Acceptance**", ""]
    for name, c in criteria.items():
        failing = c.failing()
        if c.op == ">=":
            h, m, r = min(c.values, key=lambda v: _nan_worst(v[1] - v[2], worst=-math.inf))
            detail = f"smallest margin {m - r:+.3g} dB at h = {h}"
        else:
            h, m, r = max(c.values, key=lambda v: _nan_worst(_ratio(v[1], v[2]), worst=math.inf))
            bound = "< 1" if c.op == "<" else f"<= {c.scale:.2f}"
            detail = f"largest ratio model / {c.reference} {_ratio(m, r):.3f} at h = {h} (needs {bound})"
        fails = f"; fails at h = {', '.join(map(str, failing))}" if failing else ""
        lines.append(f"- {'FAIL' if failing else 'PASS'} `{name}`: {c.rule}; {detail}{fails}")
    overall = all(not c.failing() for c in criteria.values())
    lines.append(f"- overall: {'PASS' if overall else 'FAIL'}")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 and not (math.isnan(a) or math.isnan(b)) else math.nan


def _nan_worst(value: float, worst: float) -> float:
    """Sort key that ranks NaN as the worst value."""
    return worst if math.isnan(value) else value


# ------------------------------------------------------------------------------------- data selection


def split_episodes(
    store: TrajectoryStore,
    held_out_fraction: float = 0.1,
    min_held_out: int = 1,
    *,
    episode_ids: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Deterministic train / held-out split of a store's episodes by episode id.

    Episodes are sorted by id (the order they were written) and the **last** ``max(min_held_out,
    ceil(held_out_fraction * n))`` are held out. The same store always gives the same split, and episodes appended
    later never move an old episode from training into the held-out set. Caveat: if the collecting policy changed
    over time, the held-out episodes come from its latest phase; pass ``episode_ids`` to split another selection
    (e.g. one env id, or real episodes only).

    Args:
        store: The trajectory store.
        held_out_fraction: Fraction of episodes held out, in ``(0, 1)``.
        min_held_out: At least this many episodes are held out (>= 1).
        episode_ids: Split only these episodes (default: all of the store's).

    Returns:
        ``(train_ids, held_out_ids)``, both ascending lists of ints.

    Raises:
        ValueError: a bad fraction / count, or too few episodes to keep at least one for training.
    """
    if isinstance(held_out_fraction, bool) or not (
        isinstance(held_out_fraction, (int, float)) and 0.0 < held_out_fraction < 1.0
    ):
        raise ValueError(f"held_out_fraction must be a number in (0, 1), got {held_out_fraction!r}")
    min_held_out = _check_positive_int("min_held_out", min_held_out)
    ids = sorted(int(i) for i in (store.episode_ids() if episode_ids is None else episode_ids))
    if len(set(ids)) != len(ids):
        raise ValueError("episode_ids has duplicates")
    n = len(ids)
    # round() first so 0.1 * 30 = 3.0000000000000004 does not ceil to 4.
    n_held = max(min_held_out, math.ceil(round(held_out_fraction * n, 9)))
    if n_held >= n:
        raise ValueError(
            f"{n} episode(s) cannot be split into {n_held} held-out and at least 1 training episode; collect more "
            f"episodes (at least {n_held + 1}) or lower held_out_fraction / min_held_out"
        )
    return ids[: n - n_held], ids[n - n_held :]


def sample_eval_clips(
    store: TrajectoryStore,
    episode_ids: Sequence[int],
    context: int,
    horizon: int,
    n: int,
    rng: np.random.Generator,
    *,
    replace: bool = False,
) -> dict[str, np.ndarray]:
    """Draw ``n`` windows of ``context + horizon`` frames lying entirely inside the given (held-out) episodes.

    Unlike ``ClipDataset.sample``, no window reaches past an episode end: every returned ``mask`` is all True, so
    every frame of a rollout has a real frame to be compared with.

    Args:
        store: The trajectory store.
        episode_ids: Episodes to draw from (e.g. the held-out ids of :func:`split_episodes`).
        context: ``K``, the simulator's context frames.
        horizon: ``T``, frames to dream after the context.
        n: Windows to draw.
        rng: ``numpy.random.Generator`` (the only randomness).
        replace: Draw with replacement; by default the ``n`` windows are distinct.

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
        valid = np.flatnonzero(starts + length <= frames_of)
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
    batch = dataset.get_batch(rng.choice(valid, size=n, replace=replace))
    if not batch["mask"].all():  # guards the window arithmetic above against a change of ClipDataset's indexing
        raise RuntimeError("sample_eval_clips drew a window past an episode end; ClipDataset indexing changed")
    return batch


# ------------------------------------------------------------------------------------------------ events


def match_events(
    pred: ArrayLike, true: ArrayLike, tolerance: int = EVENT_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to real events that lie at most ``tolerance`` steps apart in one window.

    Matching rule (greedy, per window): real events are visited in time order and each takes the **earliest**
    still-unmatched predicted event in ``[t - tolerance, t + tolerance]``. Every real and every predicted event is
    matched at most once, so two dreamed events next to one real event count once, and one dreamed event between
    two real events serves one of them. With the same window width for every real event this greedy rule gives the
    largest possible number of matched pairs. Events of different windows (rows) never match; an event near the
    window's edge can only match inside the window.

    Args:
        pred: bool ``(N, T)`` predicted (dreamed) events, e.g. ``reward != 0``.
        true: bool ``(N, T)`` real events at the same steps.
        tolerance: Largest allowed distance in steps (0: same step only).

    Returns:
        ``(pred_matched, true_matched)``, bool ``(N, T)`` each: which predicted events found a real one (precision
        counts these) and which real events were found (recall counts these).

    Example: a real event at step 5 is matched by a dreamed event at step 4 with ``tolerance=1``, but not by one at
    step 3.
    """
    p = _as_numpy(pred, "pred").astype(bool)
    t = _as_numpy(true, "true").astype(bool)
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"pred and true must both be bool (N, T), got {p.shape} and {t.shape}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0, got {tolerance!r}")
    pred_matched = np.zeros_like(p)
    true_matched = np.zeros_like(t)
    for row in np.flatnonzero(p.any(axis=1) & t.any(axis=1)):
        candidates = np.flatnonzero(p[row])  # ascending
        used = np.zeros(candidates.size, dtype=bool)
        for step in np.flatnonzero(t[row]):  # ascending
            ok = np.flatnonzero(~used & (np.abs(candidates - step) <= tolerance))
            if ok.size:
                used[ok[0]] = True
                pred_matched[row, candidates[ok[0]]] = True
                true_matched[row, step] = True
    return pred_matched, true_matched


def _ratio_or_nan(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass
class EventResult:
    """Reward and termination *events* of open-loop rollouts matched against the real ones (:func:`score_events`).

    An event is a step with a non-zero reward (optionally matched by sign) or a termination. Recall: real events
    with a dreamed event of the same kind within ``±tolerance`` steps in the same window; precision: dreamed events
    with a real one. The matching is one-to-one (:func:`match_events`). Per-horizon rows count an event at step
    ``h`` in row ``h`` (recall by the real event's step, precision by the dreamed event's step); the ``all`` row
    pools every step.

    Life-loss events are not reported: the simulator's step protocol predicts reward and termination only, and a
    termination is not a life loss, so there is no dreamed life loss to score.

    Attributes:
        table: Columns ``h``, then per kind (``reward``, ``terminated``) ``recall``, ``precision``, ``real``
            (real events) and ``dreamed`` (dreamed events); rows ``h = 1..T`` and ``all``.
        horizon: ``T``.
        num_clips: Windows scored.
        tolerance: Matching tolerance in steps.
        match_sign: Whether reward events matched only events of the same sign.
        arrays: bool ``(N, T)`` per kind: ``{kind}_real``, ``{kind}_dreamed``, ``{kind}_real_matched``,
            ``{kind}_dreamed_matched``.
    """

    table: HeldOutTable
    horizon: int
    num_clips: int
    tolerance: int = EVENT_TOLERANCE
    match_sign: bool = False
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def overall(self, kind: str = "reward") -> dict[str, Any]:
        """The ``all`` row of one kind: ``{"recall", "precision", "real", "dreamed"}``."""
        row = self.table.rows[-1]
        return {name: row[f"{kind} {name}"] for name in ("recall", "precision", "real", "dreamed")}

    def acceptance(self, **kwargs: Any) -> dict[str, bool]:
        """:func:`check_event_acceptance` of these events (keyword arguments are passed on)."""
        return check_event_acceptance(events=self, **kwargs)

    def to_markdown(self) -> str:
        sign = ", same sign" if self.match_sign else ""
        return "\n".join([
            f"{self.num_clips} held-out windows, {self.horizon} open-loop steps under the logged actions. A dreamed "
            f"event (reward != 0{sign}, or termination) matches a real one at most {self.tolerance} step(s) away in "
            "the same window, one to one; recall = matched real / real events (row = the real event's step), "
            "precision = matched dreamed / dreamed events (row = the dreamed event's step); nan = no events. "
            "Life-loss events are not scored: the simulator predicts no life loss.",
            "",
            self.table.to_markdown(),
        ])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (NaN becomes ``None``); ``markdown`` holds :meth:`to_markdown`."""
        return {
            "horizon": self.horizon,
            "num_clips": self.num_clips,
            "tolerance": self.tolerance,
            "match_sign": self.match_sign,
            "table": _table_dict(self.table),
            "overall": {kind: {k: _json_value(v) for k, v in self.overall(kind).items()}
                        for kind in ("reward", "terminated")},
            "markdown": self.to_markdown(),
        }


def _reward_events(
    pred: np.ndarray, true: np.ndarray, tolerance: int, match_sign: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(real, dreamed, real_matched, dreamed_matched) reward events; with ``match_sign`` per sign, then pooled."""
    if not match_sign:
        real, dreamed = true != 0, pred != 0
        dreamed_matched, real_matched = match_events(dreamed, real, tolerance)
        return real, dreamed, real_matched, dreamed_matched
    parts = []
    for sign in (1.0, -1.0):
        real, dreamed = np.sign(true) == sign, np.sign(pred) == sign
        dreamed_matched, real_matched = match_events(dreamed, real, tolerance)
        parts.append((real, dreamed, real_matched, dreamed_matched))
    (a, b, c, d), (e, f, g, h) = parts
    return a | e, b | f, c | g, d | h


def score_events(
    pred_rewards: ArrayLike,
    true_rewards: ArrayLike,
    pred_terminated: ArrayLike,
    true_terminated: ArrayLike,
    *,
    tolerance: int = EVENT_TOLERANCE,
    match_sign: bool = False,
    title: str | None = None,
) -> EventResult:
    """Event recall / precision per horizon from dreamed and real per-step rewards and termination flags.

    Args:
        pred_rewards, true_rewards: ``(N, T)`` rewards of the dreamed and the real steps ``h = 1..T``.
        pred_terminated, true_terminated: bool ``(N, T)`` termination flags of the same steps.
        tolerance: Steps a dreamed event may be early or late (:func:`match_events`).
        match_sign: Match reward events only with events of the same sign (positive with positive, negative with
            negative); by default any non-zero reward matches any non-zero reward.
        title: Table caption.

    Returns:
        :class:`EventResult`.
    """
    arrays = {name: _as_numpy(value, name) for name, value in (
        ("pred_rewards", pred_rewards), ("true_rewards", true_rewards),
        ("pred_terminated", pred_terminated), ("true_terminated", true_terminated))}  # fmt: skip
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1 or arrays["pred_rewards"].ndim != 2:
        raise ValueError(f"rewards and termination flags must all be (N, T), got {shapes}")
    n, horizon = arrays["pred_rewards"].shape
    pr = arrays["pred_rewards"].astype(np.float64)
    tr = arrays["true_rewards"].astype(np.float64)
    real_term, dreamed_term = arrays["true_terminated"].astype(bool), arrays["pred_terminated"].astype(bool)
    dreamed_term_matched, real_term_matched = match_events(dreamed_term, real_term, tolerance)
    kinds = {
        "reward": _reward_events(pr, tr, tolerance, match_sign),
        "terminated": (real_term, dreamed_term, real_term_matched, dreamed_term_matched),
    }
    columns = ["h"]
    for kind in kinds:
        columns += [f"{kind} recall", f"{kind} precision", f"{kind} real", f"{kind} dreamed"]
    rows: list[dict[str, Any]] = []
    for h in [*range(horizon), None]:
        cols = slice(None) if h is None else slice(h, h + 1)
        row: dict[str, Any] = {"h": "all" if h is None else h + 1}
        for kind, (real, dreamed, real_matched, dreamed_matched) in kinds.items():
            n_real, n_dreamed = int(real[:, cols].sum()), int(dreamed[:, cols].sum())
            row[f"{kind} recall"] = _ratio_or_nan(int(real_matched[:, cols].sum()), n_real)
            row[f"{kind} precision"] = _ratio_or_nan(int(dreamed_matched[:, cols].sum()), n_dreamed)
            row[f"{kind} real"] = n_real
            row[f"{kind} dreamed"] = n_dreamed
        rows.append(row)
    out_arrays: dict[str, np.ndarray] = {}
    for kind, (real, dreamed, real_matched, dreamed_matched) in kinds.items():
        out_arrays.update({f"{kind}_real": real, f"{kind}_dreamed": dreamed, f"{kind}_real_matched": real_matched,
                           f"{kind}_dreamed_matched": dreamed_matched})  # fmt: skip
    if title is None:
        title = f"Reward / termination events over the open-loop rollout (h = 1..{horizon}, ±{tolerance} step)"
    return EventResult(table=HeldOutTable(columns=columns, rows=rows, title=title), horizon=horizon, num_clips=n,
                       tolerance=int(tolerance), match_sign=bool(match_sign), arrays=out_arrays)  # fmt: skip


def evaluate_events(
    sim: Simulator,
    clips: Mapping[str, Any],
    *,
    horizon: int = ACCEPTANCE_HORIZON,
    generator: torch.Generator | None,
    tolerance: int = EVENT_TOLERANCE,
    match_sign: bool = False,
    batch_size: int | None = None,
    steps: int | None = None,
) -> EventResult:
    """Open-loop rollouts of real held-out windows under the real future actions, scored as events.

    The windows are those of :func:`sample_eval_clips` (their logged ``rewards`` / ``terminated`` are the real
    events); windows crossing an episode end are dropped as in :func:`evaluate_held_out`. The simulator dreams
    ``horizon`` steps from the ``K`` real context frames (:func:`open_loop_rollout`, predicted terminations do not
    stop it) and :func:`score_events` matches its rewards and terminations with the real ones.
    :func:`evaluate_held_out` with ``events=True`` gives the same table from its own rollout without dreaming twice.

    Raises:
        ValueError: clips without ``rewards`` / ``terminated``, no full window, or malformed clips.
    """
    horizon = _check_positive_int("horizon", horizon)
    data = _check_clips(sim, clips, horizon)
    if "rewards" not in data:
        raise ValueError("clips carry no 'rewards' / 'terminated'; events need the logged rewards (sample_eval_clips)")
    full = data["mask"].all(axis=1)
    if not full.any():
        raise ValueError("no window lies fully inside its episode; draw windows with sample_eval_clips")
    k = sim.context_frames
    frames, actions = data["frames"][full], data["actions"][full]
    rollout = open_loop_rollout(sim, frames[:, :k], actions[:, : k - 1], actions[:, k - 1 :], generator=generator,
                                batch_size=batch_size, steps=steps)  # fmt: skip
    return score_events(rollout["rewards"], data["rewards"][full][:, k - 1 :], rollout["terminated"],
                        data["terminated"][full][:, k - 1 :], tolerance=tolerance, match_sign=match_sign)  # fmt: skip


# ------------------------------------------------------------------------------------- closed loop


def first_end_step(done: ArrayLike) -> np.ndarray:
    """int64 ``(E,)`` 1-based step of each row's first True in bool ``(E, T)`` ``done``; -1 where there is none."""
    d = _as_numpy(done, "done").astype(bool)
    return np.where(d.any(axis=1), d.argmax(axis=1) + 1, -1).astype(np.int64)


def returns_until_end(rewards: ArrayLike, done: ArrayLike) -> np.ndarray:
    """float64 ``(E,)`` sum of each row's rewards up to and including its first ``done`` step (all if none).

    Summed step by step in order (``cumsum``), as a running return would be.
    """
    r = _as_numpy(rewards, "rewards").astype(np.float64)
    d = _as_numpy(done, "done").astype(bool)
    if r.shape != d.shape or r.ndim != 2:
        raise ValueError(f"rewards and done must both be (E, T), got {r.shape} and {d.shape}")
    after_end = (np.cumsum(d, axis=1) - d) > 0
    if r.shape[1] == 0:
        return np.zeros(r.shape[0])
    return np.cumsum(np.where(after_end, 0.0, r), axis=1)[:, -1]


def pearson(a: ArrayLike | Sequence[float], b: ArrayLike | Sequence[float]) -> tuple[float, str | None]:
    """Pearson correlation of two 1-D samples, NaN-safe: ``(r, None)`` or ``(nan, why)``.

    The correlation is undefined (NaN, with the reason) for fewer than two pairs or when either side has zero
    variance (e.g. every real episode returned the same score).
    """
    x, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in (a, b))
    x, y = x.astype(np.float64).reshape(-1), y.astype(np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return math.nan, f"undefined for {x.size} episode(s) (needs at least 2)"
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan, "undefined: non-finite returns"
    zero = [name for name, v in (("real", x), ("dream", y)) if float(np.ptp(v)) == 0.0]
    if zero:
        return math.nan, f"undefined: {' and '.join(zero)} returns have zero variance"
    return float(np.corrcoef(x, y)[0, 1]), None


def lockstep_rollout(
    sim: Simulator,
    real_env: Any,
    state: Any,
    obs: np.ndarray,
    choose_action: Callable[[int, np.ndarray], Any],
    steps: int,
    *,
    generator: torch.Generator | None,
    sampling_steps: int | None = None,
    on_step: Callable[[int, np.ndarray, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Step a real vector env and a simulator batch side by side with the same action per episode and step.

    Args:
        sim: The simulator; ``state`` is its batch (:meth:`Simulator.init_state`), one simulation per real env.
        real_env: A started real vector env (``E`` envs) whose latest observation is ``obs``.
        state: The simulator state to continue.
        obs: The real env's latest observation (passed to ``choose_action`` at the first step).
        choose_action: ``(t, real observation) -> (E,)`` integer actions for step ``t`` (0-based), applied to both.
        steps: ``T``, steps taken.
        generator: The simulator's sampling noise.
        sampling_steps: Euler steps per dream step (``None``: the simulator's default).
        on_step: Called after every step with ``(t, real observation, dreamed frame (E, H, W, 3) tensor)``.

    Returns:
        ``actions`` int64 ``(E, T)``; ``real_rewards`` float64 / ``real_terminated`` / ``real_truncated`` bool
        ``(E, T)``; ``dream_rewards`` float64 / ``dream_terminated`` bool ``(E, T)``; the final ``obs`` and
        ``state``. Episode ends stop nothing here: the real env autoresets as it was made to, the dream keeps
        dreaming; callers cut the returns (:func:`returns_until_end`) or not.
    """
    e = state.num_envs
    out = {
        "actions": np.zeros((e, steps), dtype=np.int64),
        "real_rewards": np.zeros((e, steps), dtype=np.float64),
        "real_terminated": np.zeros((e, steps), dtype=bool),
        "real_truncated": np.zeros((e, steps), dtype=bool),
        "dream_rewards": np.zeros((e, steps), dtype=np.float64),
        "dream_terminated": np.zeros((e, steps), dtype=bool),
    }
    for t in range(steps):
        action = np.asarray(choose_action(t, obs), dtype=np.int64)
        out["actions"][:, t] = action
        obs, reward, terminated, truncated, _ = real_env.step(action)
        frame, dream_reward, dream_terminated, state = sim.step(
            state, torch.from_numpy(action), generator=generator, steps=sampling_steps
        )
        out["real_rewards"][:, t] = np.asarray(reward, dtype=np.float64)
        out["real_terminated"][:, t] = np.asarray(terminated, dtype=bool)
        out["real_truncated"][:, t] = np.asarray(truncated, dtype=bool)
        out["dream_rewards"][:, t] = dream_reward.double().cpu().numpy()
        out["dream_terminated"][:, t] = dream_terminated.cpu().numpy()
        if on_step is not None:
            on_step(t, obs, frame)
    out["obs"], out["state"] = obs, state
    return out


@dataclass
class ClosedLoopResult:
    """Returns of the same action sequences in the real env and in the dream from the same real start
    (:func:`closed_loop_returns`).

    Attributes:
        env_id: The real env.
        steps: ``T``, steps after the context.
        seed: Seed of the real env, the action sequence and the dream's noise.
        context_frames: ``K``.
        real_returns, dream_returns: float64 ``(E,)``: rewards summed over the ``T`` steps up to and including the
            episode's first end (real: terminated or truncated; dream: predicted termination).
        real_end_steps, dream_end_steps: int64 ``(E,)`` 1-based step of that end, -1 if the episode ran on.
        actions: int64 ``(E, K - 1 + T)``: the context actions, then the ``T`` compared ones.
        correlation: Per-episode Pearson correlation of the returns (NaN when undefined).
        correlation_note: Why the correlation is NaN, else ``None``.
        sampling_steps: Euler steps per dream step used (``None``: the simulator's default).
    """

    env_id: str
    steps: int
    seed: int
    context_frames: int
    real_returns: np.ndarray
    dream_returns: np.ndarray
    real_end_steps: np.ndarray
    dream_end_steps: np.ndarray
    actions: np.ndarray
    correlation: float
    correlation_note: str | None = None
    sampling_steps: int | None = None

    @property
    def episodes(self) -> int:
        return int(self.real_returns.shape[0])

    def summary(self) -> dict[str, float]:
        """Mean and (population) standard deviation of each side's returns."""
        real, dream = self.real_returns, self.dream_returns
        return {"real_mean": float(real.mean()), "real_std": float(real.std()),
                "dream_mean": float(dream.mean()), "dream_std": float(dream.std())}  # fmt: skip

    def acceptance(self, **kwargs: Any) -> dict[str, bool]:
        """:func:`check_event_acceptance` of these returns (keyword arguments are passed on)."""
        return check_event_acceptance(closed_loop=self, **kwargs)

    def to_markdown(self) -> str:
        s = self.summary()
        corr = "nan" if math.isnan(self.correlation) else f"{self.correlation:.3f}"
        note = f" ({self.correlation_note})" if self.correlation_note else ""
        rows = [
            {"side": "real", "mean return": s["real_mean"], "std": s["real_std"],
             "episodes ended": int((self.real_end_steps > 0).sum())},
            {"side": "dream", "mean return": s["dream_mean"], "std": s["dream_std"],
             "episodes ended": int((self.dream_end_steps > 0).sum())},
        ]  # fmt: skip
        table = HeldOutTable(
            columns=["side", "mean return", "std", "episodes ended"], rows=rows,
            title=f"Closed-loop returns: {self.episodes} episodes x {self.steps} steps, same actions, real vs dream",
        )  # fmt: skip
        return "\n".join([
            f"Each episode starts from a seeded reset of `{self.env_id}` (seed {self.seed}) and "
            f"{self.context_frames - 1} real steps, whose {self.context_frames} frames start the dream; then the same "
            "uniformly random action sequence (all actions, FIRE included where the game has it) runs "
            f"{self.steps} steps in both. Returns sum the rewards up to and including each side's first episode end.",
            "",
            table.to_markdown(),
            "",
            f"Per-episode Pearson correlation of real and dream returns: {corr}{note}",
        ])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary with the per-episode returns (NaN becomes ``None``)."""
        return {
            "env_id": self.env_id,
            "episodes": self.episodes,
            "steps": self.steps,
            "seed": self.seed,
            "context_frames": self.context_frames,
            "sampling_steps": self.sampling_steps,
            **{k: _json_value(v) for k, v in self.summary().items()},
            "correlation": _json_value(self.correlation),
            "correlation_note": self.correlation_note,
            "real_returns": [_json_value(v) for v in self.real_returns],
            "dream_returns": [_json_value(v) for v in self.dream_returns],
            "markdown": self.to_markdown(),
        }


def check_action_meanings(env_id: str, meanings: Sequence[str], sim: Simulator) -> None:
    """Raise ``ValueError`` unless the real env ``env_id`` and ``sim`` give the same meaning to every action index."""
    meanings = list(meanings)
    if meanings != list(sim.config.action_meanings):
        raise ValueError(
            f"{env_id} has actions {meanings} but the simulator's are {list(sim.config.action_meanings)}; "
            "the same action index would mean different things in the real game and the dream."
        )


def closed_loop_returns(
    sim: Simulator,
    env_id: str | None = None,
    episodes: int = 100,
    steps: int = 100,
    seed: int = 0,
    *,
    sampling_steps: int | None = None,
    generator: torch.Generator | None = None,
    actions: ArrayLike | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> ClosedLoopResult:
    """Run the same action sequences in the real env and in the dream from the same real start; compare returns.

    All ``episodes`` run as one real vector env and one simulator batch: the real env (``make_real_env(env_id,
    num_envs=episodes)``) is reset with ``seed``, then takes ``K - 1`` steps with the first ``K - 1`` actions of
    each sequence; its ``K`` frames and those actions start the dream (:meth:`Simulator.init_state`). Then both take
    the remaining ``steps`` actions together (:func:`lockstep_rollout`). Rewards of the context steps are not
    counted; each side's return stops accumulating after its first episode end (real: terminated or truncated;
    dream: predicted termination), that step's reward included. (A real episode ending within the ``K - 1``
    context steps would go unnoticed; no ALE or Procgen game ends that fast.)

    Args:
        sim: The simulator (64x64 frames, the real env's action set).
        env_id: Real env id (default: the simulator's ``config.env_id``).
        episodes: ``E``.
        steps: ``T``, compared steps after the context.
        seed: Seeds the real env's reset, the action sequence and (without ``generator``) the dream's noise.
        sampling_steps: Euler steps per dream step (``None``: the simulator's default).
        generator: The dream's noise (default: a generator on the simulator's device seeded with ``seed``).
        actions: int ``(E, K - 1 + T)`` action sequences to use instead of the seeded uniform ones (which draw
            every action of the game's action set with equal probability, FIRE included).
        env_kwargs: Passed to :func:`dws_gym.envs.real.make_real_env` (e.g. ``num_threads``).

    Returns:
        :class:`ClosedLoopResult` (the correlation is NaN, with the reason, when either side's returns do not vary).

    Raises:
        ValueError: the real env's actions or frames differ from the simulator's, or bad sizes.
    """
    from dws_gym.envs.real import make_real_env

    episodes = _check_positive_int("episodes", episodes)
    steps = _check_positive_int("steps", steps)
    env_id = sim.config.env_id if env_id is None else env_id
    k = sim.context_frames
    if actions is None:
        seq = np.random.default_rng(seed).integers(0, sim.num_actions, size=(episodes, k - 1 + steps))
    else:
        seq = _as_numpy(actions, "actions") if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if seq.shape != (episodes, k - 1 + steps):
            raise ValueError(f"actions must be (episodes, K - 1 + steps) = ({episodes}, {k - 1 + steps}), "
                             f"got {seq.shape}")  # fmt: skip
    seq = sim.check_actions(seq, (episodes, k - 1 + steps), "actions").cpu().numpy()
    if generator is None:
        generator = torch.Generator(device=sim.device).manual_seed(int(seed))

    real = make_real_env(env_id, num_envs=episodes, **dict(env_kwargs or {}))
    try:
        check_action_meanings(env_id, real.get_action_meanings(), sim)
        shape = tuple(real.single_observation_space.shape)
        if shape != tuple(sim.config.obs_shape):
            raise ValueError(f"the simulator dreams {tuple(sim.config.obs_shape)} frames but {env_id} emits {shape}")
        obs, _ = real.reset(seed=int(seed))
        context = [np.asarray(obs).copy()]
        for j in range(k - 1):
            obs, *_ = real.step(seq[:, j])
            context.append(np.asarray(obs).copy())
        state = sim.init_state(np.stack(context, axis=1), seq[:, : k - 1])
        run = lockstep_rollout(sim, real, state, obs, lambda t, _obs: seq[:, k - 1 + t], steps, generator=generator,
                               sampling_steps=sampling_steps)  # fmt: skip
    finally:
        real.close()
    real_done = run["real_terminated"] | run["real_truncated"]
    real_returns = returns_until_end(run["real_rewards"], real_done)
    dream_returns = returns_until_end(run["dream_rewards"], run["dream_terminated"])
    corr, note = pearson(real_returns, dream_returns)
    return ClosedLoopResult(
        env_id=env_id, steps=steps, seed=int(seed), context_frames=k, real_returns=real_returns,
        dream_returns=dream_returns, real_end_steps=first_end_step(real_done),
        dream_end_steps=first_end_step(run["dream_terminated"]), actions=seq.astype(np.int64), correlation=corr,
        correlation_note=note, sampling_steps=sampling_steps,
    )  # fmt: skip


# ---------------------------------------------------------------------------------- event acceptance


def _event_criteria(
    events: EventResult | None,
    closed_loop: ClosedLoopResult | None,
    min_reward_recall: float,
    min_reward_precision: float,
    return_tolerance: float,
    min_correlation: float,
) -> dict[str, tuple[bool, str]]:
    if events is None and closed_loop is None:
        raise ValueError("pass events (EventResult) and / or closed_loop (ClosedLoopResult)")
    out: dict[str, tuple[bool, str]] = {}
    if events is not None:
        reward = events.overall("reward")
        recall, precision = float(reward["recall"]), float(reward["precision"])
        out["reward_recall"] = (recall >= min_reward_recall,  # NaN (no real events) fails
                                f"reward-event recall {recall:.3f} >= {min_reward_recall:g} "
                                f"({reward['real']} real events, ±{events.tolerance} step)")  # fmt: skip
        out["reward_precision"] = (precision >= min_reward_precision,
                                   f"reward-event precision {precision:.3f} >= {min_reward_precision:g} "
                                   f"({reward['dreamed']} dreamed events)")  # fmt: skip
    if closed_loop is not None:
        s = closed_loop.summary()
        real_mean, dream_mean = s["real_mean"], s["dream_mean"]
        ok = abs(dream_mean - real_mean) <= return_tolerance * abs(real_mean)
        out["closed_loop_return"] = (bool(ok), f"mean dream return {dream_mean:.3g} within ±{return_tolerance:.0%} "
                                               f"of mean real return {real_mean:.3g}")  # fmt: skip
        corr = closed_loop.correlation
        note = f"; {closed_loop.correlation_note}" if closed_loop.correlation_note else ""
        out["closed_loop_correlation"] = (corr >= min_correlation,
                                          f"per-episode return correlation {corr:.3f} >= {min_correlation:g}{note}")
    return out


def check_event_acceptance(
    events: EventResult | None = None,
    closed_loop: ClosedLoopResult | None = None,
    *,
    min_reward_recall: float = MIN_REWARD_RECALL,
    min_reward_precision: float = MIN_REWARD_PRECISION,
    return_tolerance: float = RETURN_TOLERANCE,
    min_correlation: float = MIN_RETURN_CORRELATION,
) -> dict[str, bool]:
    """Event and closed-loop acceptance criteria, as named booleans (like :func:`check_acceptance`).

    * ``reward_recall``: overall reward-event recall ``>= min_reward_recall`` (0.6);
    * ``reward_precision``: overall reward-event precision ``>= min_reward_precision`` (0.5);
    * ``closed_loop_return``: ``|mean dream return - mean real return| <= return_tolerance * |mean real return|``
      (±30 %; with a real mean of 0 only a dream mean of 0 passes);
    * ``closed_loop_correlation``: per-episode Pearson correlation ``>= min_correlation`` (0.5).

    NaN (no events, undefined correlation) fails. Only the criteria of the results passed are returned, plus
    ``all``.
    """
    criteria = _event_criteria(events, closed_loop, min_reward_recall, min_reward_precision, return_tolerance,
                               min_correlation)  # fmt: skip
    result = {name: bool(ok) for name, (ok, _) in criteria.items()}
    result["all"] = all(result.values())
    return result


def event_acceptance_summary(
    events: EventResult | None = None,
    closed_loop: ClosedLoopResult | None = None,
    **kwargs: Any,
) -> str:
    """Markdown verdict of :func:`check_event_acceptance`: one PASS / FAIL line per criterion."""
    criteria = _event_criteria(
        events, closed_loop,
        kwargs.pop("min_reward_recall", MIN_REWARD_RECALL), kwargs.pop("min_reward_precision", MIN_REWARD_PRECISION),
        kwargs.pop("return_tolerance", RETURN_TOLERANCE), kwargs.pop("min_correlation", MIN_RETURN_CORRELATION),
    )  # fmt: skip
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    lines = ["**Event acceptance**", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'} `{name}`: {text}" for name, (ok, text) in criteria.items()]
    lines.append(f"- overall: {'PASS' if all(ok for ok, _ in criteria.values()) else 'FAIL'}")
    return "\n".join(lines)
