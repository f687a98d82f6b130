"""Start-state samplers: where dreams begin (DESIGN D10).

A dream env (:class:`~dws_gym.envs.dream.DreamVectorEnv`) starts every episode from a window of ``K`` real frames and
the ``K - 1`` actions between them. It asks a *start-state sampler* for those windows, and a trainer can score each
start it was given (e.g. by the TD error of the imagined rollout) and hand the scores back. The protocol::

    frames, actions, ids = sampler.sample(n, rng)   # uint8 (n, K, H, W, 3), int64 (n, K - 1), int64 (n,)
    sampler.update_priorities(ids, values)          # ids int64 (m,), values float (m,)

``rng`` is the env's ``numpy.random.Generator`` (``env.np_random``), passed on every call so that a seeded env
draws the same starts every run; a sampler must draw its randomness from it and nothing else.
``ids`` identify the returned windows in the sampler's own numbering (reported by the env as ``info["start_id"]``).

:class:`UniformStartSampler` draws uniformly from a fixed set of windows: the simulator's bundled real start clips by
default (:meth:`UniformStartSampler.from_simulator`) or the user's own arrays. A prioritized sampler implements the
same two methods and plugs into the env unchanged.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["StartStateSampler", "UniformStartSampler", "as_start_sampler", "check_priorities", "check_start_batch"]


@runtime_checkable
class StartStateSampler(Protocol):
    """Anything with these two methods can feed a dream env its start states."""

    def sample(self, n: int, rng: np.random.Generator) -> tuple[Any, Any, np.ndarray]:
        """Draw ``n`` start windows using only ``rng``.

        Returns:
            ``(frames, actions, ids)``: frames uint8 ``(n, K, H, W, 3)`` and actions integer ``(n, K - 1)`` (numpy
            arrays or torch tensors on any device), ids int64 ``(n,)`` numpy.
        """
        ...

    def update_priorities(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Receive a score per previously sampled window (``ids`` int64 ``(m,)``, ``values`` float ``(m,)``)."""
        ...


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


class UniformStartSampler:
    """Uniform sampling (with replacement) over a fixed set of start windows.

    Args:
        frames: ``(S, K, H, W, 3)`` uint8 windows of real frames (numpy or torch; kept on the CPU).
        actions: ``(S, K - 1)`` integer actions between those frames.

    ``ids`` are window indices in ``[0, S)``. :meth:`update_priorities` validates its input and records nothing:
    uniform sampling ignores scores (a prioritized sampler is the one that uses them).
    """

    def __init__(self, frames: Any, actions: Any) -> None:
        f = _to_numpy(frames)
        a = _to_numpy(actions)
        if f.dtype != np.uint8 or f.ndim != 5 or f.shape[-1] != 3:
            raise ValueError(
                f"start frames must be uint8 (S, K, H, W, 3) — S windows of K frames — got {f.dtype} {f.shape}."
            )
        if f.shape[0] < 1:
            raise ValueError("start frames hold no window (S = 0); pass at least one.")
        if a.shape != (f.shape[0], f.shape[1] - 1):
            raise ValueError(
                f"start actions must be (S, K - 1) = {(f.shape[0], f.shape[1] - 1)} to match frames {f.shape}, "
                f"got {a.shape}."
            )
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"start actions must be integer action indices, got dtype {a.dtype}.")
        self.frames = f
        self.actions = a.astype(np.int64)

    @classmethod
    def from_simulator(cls, simulator: Any) -> UniformStartSampler:
        """Uniform over a :class:`~dws_gym.simulator.Simulator`'s bundled real start clips."""
        return cls(simulator.start_frames, simulator.start_actions)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` windows drawn with ``rng``: frames uint8 (n, K, H, W, 3), actions int64 (n, K-1), ids int64 (n,)."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator (the env's np_random), got {type(rng).__name__}.")
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}.")
        ids = rng.integers(0, len(self), size=int(n), dtype=np.int64)
        return self.frames[ids], self.actions[ids], ids

    def update_priorities(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Validate ``ids`` (in ``[0, S)``) and ``values`` (finite, same length); uniform sampling ignores them."""
        check_priorities(ids, values, len(self))


def check_priorities(ids: Any, values: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an ``update_priorities`` call against a sampler of ``size`` windows; return (ids int64, values f64)."""
    i = _to_numpy(ids)
    v = _to_numpy(values)
    if i.ndim != 1 or v.shape != i.shape:
        raise ValueError(f"ids and values must be 1-D of equal length, got shapes {i.shape} and {v.shape}.")
    if i.size and not np.issubdtype(i.dtype, np.integer):
        raise ValueError(f"ids must be integers (the info['start_id'] values), got dtype {i.dtype}.")
    if i.size and (i.min() < 0 or i.max() >= size):
        raise ValueError(f"ids must lie in [0, {size}) (this sampler's windows), got {i.tolist()}.")
    v = v.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"priority values must be finite, got {v.tolist()}.")
    return i.astype(np.int64), v


def as_start_sampler(start_states: Any, simulator: Any = None) -> StartStateSampler:
    """Turn the ``start_states`` argument of a dream env into a sampler.

    Args:
        start_states: ``None`` (uniform over ``simulator``'s bundled start clips), a ``(frames, actions)`` pair of
            arrays (uniform over them), or an object with ``sample`` and ``update_priorities`` (used as is).
        simulator: needed when ``start_states`` is ``None``.
    """
    if start_states is None:
        if simulator is None:
            raise ValueError("start_states=None needs a simulator whose bundled start clips to sample.")
        return UniformStartSampler.from_simulator(simulator)
    if callable(getattr(start_states, "sample", None)) and callable(getattr(start_states, "update_priorities", None)):
        return start_states
    if isinstance(start_states, (tuple, list)) and len(start_states) == 2:
        return UniformStartSampler(*start_states)
    raise ValueError(
        "start_states must be None (the simulator's bundled clips), a (frames, actions) pair of arrays, or a sampler "
        f"with sample(n, rng) and update_priorities(ids, values); got {type(start_states).__name__}."
    )


def check_start_batch(
    batch: Any, n: int, context_frames: int, obs_shape: tuple[int, ...]
) -> tuple[Any, Any, np.ndarray]:
    """Validate what a sampler returned for ``sample(n, rng)``: a clear error names the offending part."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise ValueError(f"a start-state sampler's sample() must return (frames, actions, ids), got {type(batch)}.")
    frames, actions, ids = batch
    fshape = tuple(frames.shape)
    want = (n, context_frames, *obs_shape)
    if fshape != want:
        raise ValueError(f"sampler returned frames of shape {fshape}; the simulator needs {want}.")
    if tuple(actions.shape) != (n, context_frames - 1):
        raise ValueError(f"sampler returned actions of shape {tuple(actions.shape)}; needed {(n, context_frames - 1)}.")
    i = _to_numpy(ids)
    if i.shape != (n,) or (i.size and not np.issubdtype(i.dtype, np.integer)):
        raise ValueError(f"sampler returned ids {i.dtype} {i.shape}; needed integers of shape {(n,)}.")
    return frames, actions, i.astype(np.int64)
