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

Everything runs through the simulator's step protocol (DESIGN D2: ``init_state`` / ``step``), so any backbone
is evaluated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    "EvalResult",
    "acceptance_summary",
    "check_acceptance",
    "evaluate_held_out",
    "frame_metrics",
    "open_loop_rollout",
    "sample_eval_clips",
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

    def acceptance(self, **kwargs: Any) -> dict[str, bool]:
        """:func:`check_acceptance` of :attr:`table` (keyword arguments are passed on)."""
        return check_acceptance(self.table, **kwargs)

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

    reward_one_step = reward_rollout = None
    if "rewards" in data:
        true_rewards = data["rewards"][:, k - 1 :].astype(np.float32)
        true_terminated = data["terminated"][:, k - 1 :].astype(bool)
        arrays["true_rewards"], arrays["true_terminated"] = true_rewards, true_terminated
        reward_rollout = reward_termination_table(
            rollout["rewards"], true_rewards, rollout["terminated"], true_terminated,
            title=f"Reward sign / termination over the open-loop rollout (h = 1..{horizon})",
        )  # fmt: skip
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
