"""Open-loop rollouts of real clips through the simulator's step protocol, and the checks they share.

:func:`open_loop_rollout` dreams ``T`` steps from ``K`` real context frames under given actions, feeding the
simulator its own frames; the held-out table (:mod:`dws_gym.evaluation.held_out`) and the event scores
(:mod:`dws_gym.evaluation.events`) both run on it. The private helpers here (array and integer checks, clip-batch
validation, JSON conversion of results) are the ones every evaluation module uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from dws_gym.checks import check_positive_int as _check_positive_int
from dws_gym.metrics import HeldOutTable

if TYPE_CHECKING:
    from dws_gym.simulator import Simulator

__all__ = ["open_loop_rollout"]

ArrayLike = Union[np.ndarray, torch.Tensor]


# ------------------------------------------------------------------------------------------ input helpers


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


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


# ------------------------------------------------------------------------------------------- clip batches


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
    if "step_mask" in clips and clips["step_mask"] is not None:  # steps of the episode, a frameless last one too
        step_mask = _as_numpy(clips["step_mask"], "clips['step_mask']").astype(bool)
        if step_mask.shape != (n, length - 1):
            raise ValueError(f"clips['step_mask'] must be bool ({n}, {length - 1}), got {step_mask.shape}")
        out["step_mask"] = step_mask[:, : need - 1]
    for key in ("episode_id", "start"):
        if key in clips and clips[key] is not None:
            arr = _as_numpy(clips[key], f"clips[{key!r}]").reshape(-1)
            if arr.shape != (n,):
                raise ValueError(f"clips[{key!r}] must hold one entry per clip ({n}), got shape {arr.shape}")
            out[key] = arr
    return out


# ---------------------------------------------------------------------------------------- results as JSON


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
