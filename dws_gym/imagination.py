"""Start-state samplers: where dreams begin (docs/ARCHITECTURE.md, 'Start-state samplers').

A dream env (:class:`~dws_gym.envs.dream.DreamVectorEnv`) starts every episode from a window of ``K`` real frames and
the ``K - 1`` actions between them. It asks a *start-state sampler* for those windows, and a trainer can score each
start it was given (e.g. by the TD error of the imagined rollout) and hand the scores back. The protocol::

    frames, actions, ids = sampler.sample(n, rng)   # uint8 (n, K, H, W, 3), int64 (n, K - 1), int64 (n,)
    sampler.update_priorities(ids, values)          # ids int64 (m,), values float (m,)

``rng`` is the env's ``numpy.random.Generator`` (``env.np_random``), passed on every call so that a seeded env
draws the same starts every run; a sampler must draw its randomness from it and nothing else.
``ids`` identify the returned windows in the sampler's own numbering (reported by the env as ``info["start_id"]``).

:class:`UniformStartSampler` draws uniformly from a fixed set of windows: the simulator's bundled real start clips by
default (:meth:`UniformStartSampler.from_simulator`) or the user's own arrays. :class:`StoreStartSampler` draws
uniformly from every window of a trajectory store, read from disk on demand (a million-step dataset never needs RAM). :class:`PrioritizedStartStates` is
the prioritized imagination buffer of the DWS paper: a bounded ring of real start windows sampled in proportion to
how much the critic still has to learn from the dreams started there (the TD error), through a :class:`SumTree`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "PrioritizedStartStates",
    "StartStateSampler",
    "StoreStartSampler",
    "SumTree",
    "UniformStartSampler",
    "as_start_sampler",
    "check_priorities",
    "check_start_batch",
]


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


def _draw_uniform_ids(n: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """``n`` window indices in ``[0, size)`` drawn with the env's ``rng`` (both arguments checked)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (the env's np_random), got {type(rng).__name__}.")
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}.")
    return rng.integers(0, size, size=int(n), dtype=np.int64)


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
        ids = _draw_uniform_ids(n, rng, len(self))
        return self.frames[ids], self.actions[ids], ids

    def update_priorities(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Validate ``ids`` (in ``[0, S)``) and ``values`` (finite, same length); uniform sampling ignores them."""
        check_priorities(ids, values, len(self))


class StoreStartSampler:
    """Uniform sampling over every window of ``K`` consecutive real frames in a trajectory store, except those that
    end on the frame after a termination (a game-over screen).

    Windows are read from the memory-mapped store when drawn, so a store of any size costs no RAM. ``ids`` are window
    indices of the store's clip view (:meth:`locate` maps them back to ``(episode_id, first frame)``).
    :meth:`update_priorities` validates its input and records nothing.

    Args:
        store: a :class:`~dws_gym.data.TrajectoryStore` (or its folder) of real episodes.
        context_frames: ``K``, the simulator's context length.
        episode_ids: restrict the windows to these episodes (default: all).

    Raises:
        ValueError: ``K < 2``, or no episode holds ``K`` frames.
    """

    def __init__(self, store: Any, context_frames: int, *, episode_ids: Any = None) -> None:
        from dws_gym.data import ClipDataset, TrajectoryStore

        if int(context_frames) != context_frames or context_frames < 2:
            raise ValueError(f"context_frames must be an integer >= 2, got {context_frames!r}.")
        if not isinstance(store, TrajectoryStore):
            store = TrajectoryStore(store)
        self.store = store
        self.context_frames = int(context_frames)
        # A window of K - 1 context frames plus one target is exactly K real frames and the K - 1 actions between.
        self._clips = ClipDataset(store, self.context_frames - 1, 1, episode_ids=episode_ids)
        # A window whose last frame follows a termination shows the game-over screen: no dream starts there.
        self._windows = np.flatnonzero(~self._clips.step_records()["terminated"][:, -1])
        if len(self._windows) == 0:
            raise ValueError(f"{store.root}: no episode holds {self.context_frames} frames before its end, so no "
                             "start window can be drawn; collect longer episodes or use a simulator with fewer "
                             "context frames.")

    def __len__(self) -> int:
        return len(self._windows)

    def locate(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(episode_ids, first_frames)`` int64 arrays of the windows ``ids``."""
        return self._clips.locate(self._windows[np.asarray(ids, dtype=np.int64)])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` windows drawn with ``rng``: frames uint8 (n, K, H, W, 3), actions int64 (n, K-1), ids int64 (n,)."""
        ids = _draw_uniform_ids(n, rng, len(self))
        batch = self._clips.get_batch(self._windows[ids])
        return batch["frames"], batch["actions"].astype(np.int64), ids

    def update_priorities(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Validate ``ids`` (in ``[0, len)``) and ``values`` (finite, same length); uniform sampling ignores them."""
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


class SumTree:
    """A binary sum tree (with a min tree beside it) over ``capacity`` non-negative leaves, stored in flat arrays.

    Leaf ``i`` lives at ``size + i`` of each array (``size`` is ``capacity`` rounded up to a power of two); node ``j``
    holds the sum (and the min) of nodes ``2j`` and ``2j + 1``, the root is node 1. :meth:`update` and :meth:`find`
    touch one node per level, O(log capacity) per leaf, and take whole batches of leaves at once. Unused leaves hold
    0 in the sum tree and ``inf`` in the min tree, so they are never found and never the minimum.
    """

    def __init__(self, capacity: int) -> None:
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"SumTree capacity must be a positive integer, got {capacity!r}.")
        self.capacity = int(capacity)
        self._size = 1 << (self.capacity - 1).bit_length()
        self._sum = np.zeros(2 * self._size, dtype=np.float64)
        self._min = np.full(2 * self._size, np.inf, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self._sum[1])

    @property
    def min(self) -> float:
        """Smallest leaf that was ever set (``inf`` while none was)."""
        return float(self._min[1])

    def get(self, index: Any) -> np.ndarray:
        """Leaf values at ``index`` (int array)."""
        return self._sum[self._size + np.asarray(index, dtype=np.int64)]

    def update(self, index: Any, value: Any) -> None:
        """Set leaves ``index`` (int (m,)) to ``value`` (float (m,) >= 0); a repeated index keeps its last value."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        val = np.broadcast_to(np.asarray(value, dtype=np.float64), idx.shape)
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.capacity:
            raise ValueError(f"SumTree leaves must lie in [0, {self.capacity}), got {idx.tolist()}.")
        if not np.all(np.isfinite(val)) or val.min() < 0:
            raise ValueError(f"SumTree values must be finite and >= 0, got {val.tolist()}.")
        # keep the last occurrence of each index
        last = idx.size - 1 - np.unique(idx[::-1], return_index=True)[1]
        pos = idx[last] + self._size
        self._sum[pos] = val[last]
        self._min[pos] = val[last]
        pos = np.unique(pos >> 1)
        while pos.size and pos[0] >= 1:  # every leaf sits at the same depth: one level per pass
            self._sum[pos] = self._sum[2 * pos] + self._sum[2 * pos + 1]
            self._min[pos] = np.minimum(self._min[2 * pos], self._min[2 * pos + 1])
            pos = np.unique(pos >> 1)
            if pos[0] == 0:
                break

    def find(self, mass: Any) -> np.ndarray:
        """Leaf index of each prefix ``mass`` (float (n,) in ``[0, total)``): the ``i`` with
        ``sum(leaves[:i]) <= mass < sum(leaves[:i + 1])``. Never returns a leaf of value 0 while ``total > 0``."""
        u = np.array(mass, dtype=np.float64).reshape(-1)
        node = np.ones(u.shape, dtype=np.int64)
        while self._size > 1 and node.size and node[0] < self._size:
            left = 2 * node
            left_mass = self._sum[left]
            # the right-subtree check guards against rounding walking into an empty subtree
            right = (u >= left_mass) & (self._sum[left + 1] > 0)
            u = np.where(right, u - left_mass, u)
            node = np.where(right, left + 1, left)
        return node - self._size


class PrioritizedStartStates:
    """Prioritized imagination: a bounded buffer of real start windows, sampled by the TD error of their dreams.

    Windows of ``K`` real frames and the ``K - 1`` actions between them (the simulator's start format) enter with
    :meth:`add`, which returns their ids: consecutive integers that keep increasing over the buffer's life, so an id
    names one window forever. When the buffer is full the oldest windows are evicted (a ring buffer); an evicted id
    is never sampled again and updates of it are ignored.

    Window ``i`` is drawn with probability ``P(i) = p_i / sum_j p_j`` (with replacement, through a :class:`SumTree`:
    O(log n) per draw and per update), where the priority is ``p_i = (|v_i| + eps) ** alpha`` and ``v_i`` is the
    window's **TD priority**: the mean absolute TD error over the ``H``-step rollout imagined from it under the current
    critic,

        ``v_i = mean_t |delta_t|``,  ``delta_t = r_t + gamma * (1 - d_t) * V(s_{t+1}) - V(s_t)``,  t = 0 .. H - 1,

    with ``r_t`` the (clipped) dreamed reward, ``d_t`` the dreamed termination and ``V`` the critic that acted in the
    rollout; the cut at ``H`` is a truncation (``d = 0``, bootstrapped from ``V(s_H)``), and a rollout that
    terminates early averages over the steps it has. Trainers pass these values to :meth:`update_priorities` after
    each imagined rollout (the dream env reports the ids as ``info["start_id"]``). A new window enters at the largest
    priority seen so far (1.0 before any update), so every window is likely to be tried once.

    The bias of prioritized draws is corrected by :meth:`importance_weights`, ``w_i = (N * P(i)) ** -beta / max_j w_j``
    (``N`` windows held; the max over the drawn batch, so weights lie in ``(0, 1]``), with ``beta`` annealed towards 1
    over training by :meth:`set_beta`. ``alpha = 0`` is uniform sampling over the same buffer (every weight 1).

    A window's first priority should be a TD error too: a trainer that knows it (``ppo_dws.py`` sets the real
    rollout's ``|delta|`` at the window's last frame right after adding it) passes it to :meth:`update_priorities`.
    Windows left at the insertion priority would otherwise decide most draws whenever far more windows enter than
    dreams start (a real rollout yields one per env step).

    Args:
        capacity: Most windows held; the oldest are evicted beyond it. Memory: ``capacity * K * H * W * 3`` bytes
            (about 49 kB per window of four 64x64 RGB frames).
        alpha: Priority exponent (0 = uniform, 1 = fully proportional to the TD priority).
        beta: Initial importance-sampling exponent (see :meth:`set_beta`).
        eps: Added to ``|v|`` so no window's probability falls to zero.

    It implements the start-state sampler protocol (``sample(n, rng)`` and ``update_priorities(ids, values)``), so it
    plugs into :class:`~dws_gym.envs.dream.DreamVectorEnv` as ``start_states=``.
    """

    def __init__(self, capacity: int, *, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-3) -> None:
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}.")
        if not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be >= 0, got {alpha!r}.")
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be > 0 (it keeps every window drawable), got {eps!r}.")
        self.capacity = int(capacity)
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.beta = 0.0
        self.set_beta(beta)
        self.tree = SumTree(self.capacity)
        self.max_priority = 1.0
        self.next_id = 0
        self.frames: np.ndarray | None = None  # (capacity, K, H, W, 3) uint8, allocated by the first add
        self.actions: np.ndarray | None = None  # (capacity, K - 1) int64
        self._ids = np.full(self.capacity, -1, dtype=np.int64)  # id held by each slot

    # ------------------------------------------------------------------------------------------- bookkeeping
    def __len__(self) -> int:
        return min(self.next_id, self.capacity)

    def set_beta(self, beta: float) -> None:
        """Set the importance-sampling exponent (``0 <= beta <= 1``; anneal it to 1 by the end of training)."""
        if not (np.isfinite(beta) and 0.0 <= beta <= 1.0):
            raise ValueError(f"beta must lie in [0, 1], got {beta!r}.")
        self.beta = float(beta)

    def _live(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask of the ids still held (returned by add() and not evicted)."""
        return (ids >= self.next_id - len(self)) & (ids < self.next_id)

    def _check_ids(self, ids: Any) -> np.ndarray:
        i = _to_numpy(ids)
        if i.ndim != 1 or (i.size and not np.issubdtype(i.dtype, np.integer)):
            raise ValueError(f"ids must be a 1-D integer array (the ids add() returned), got {i.dtype} {i.shape}.")
        i = i.astype(np.int64)
        if i.size and (i.min() < 0 or i.max() >= self.next_id):
            raise ValueError(f"ids must be ids add() returned, in [0, {self.next_id}); got {i.tolist()}.")
        return i

    # ------------------------------------------------------------------------------------------- the buffer
    def add(self, frames: Any, actions: Any) -> np.ndarray:
        """Store windows (frames uint8 ``(n, K, H, W, 3)``, actions integer ``(n, K - 1)``) at the max priority.

        Returns:
            Their ids, int64 ``(n,)``. Past ``capacity`` the oldest windows are evicted.
        """
        f = _to_numpy(frames)
        a = _to_numpy(actions)
        if f.dtype != np.uint8 or f.ndim != 5 or f.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (n, K, H, W, 3), got {f.dtype} {f.shape}.")
        if a.shape != (f.shape[0], f.shape[1] - 1) or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(
                f"actions must be integers of shape {(f.shape[0], f.shape[1] - 1)}, got {a.dtype} {a.shape}."
            )
        if self.frames is None:
            self.frames = np.zeros((self.capacity, *f.shape[1:]), dtype=np.uint8)
            self.actions = np.zeros((self.capacity, f.shape[1] - 1), dtype=np.int64)
        elif f.shape[1:] != self.frames.shape[1:]:
            raise ValueError(f"frames of shape {f.shape[1:]} per window; this buffer holds {self.frames.shape[1:]}.")
        n = f.shape[0]
        ids = self.next_id + np.arange(n, dtype=np.int64)
        keep = slice(max(0, n - self.capacity), n)  # more than capacity at once: only the newest survive
        slots = ids[keep] % self.capacity
        self.frames[slots] = f[keep]
        self.actions[slots] = a[keep]
        self._ids[slots] = ids[keep]
        self.tree.update(slots, self.max_priority)
        self.next_id += n
        return ids

    def windows(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """The frames and actions of held windows ``ids``. Raises ValueError for evicted ids."""
        i = self._check_ids(ids)
        if not self._live(i).all():
            raise ValueError(f"ids {i[~self._live(i)].tolist()} were evicted (the buffer keeps the newest "
                             f"{self.capacity}).")
        slots = i % self.capacity
        return self.frames[slots], self.actions[slots]  # type: ignore[index]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` windows with probability ``P(i)``, using only ``rng``.

        Returns:
            ``(frames uint8 (n, K, H, W, 3), actions int64 (n, K - 1), ids int64 (n,))``.
        """
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator (the env's np_random), got {type(rng).__name__}.")
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}.")
        if len(self) == 0:
            raise ValueError("PrioritizedStartStates is empty: add() real windows before sampling start states.")
        slots = self.tree.find(rng.random(int(n)) * self.tree.total)
        slots = np.minimum(slots, len(self) - 1)  # belt and braces: only filled slots carry mass
        return self.frames[slots], self.actions[slots], self._ids[slots].copy()  # type: ignore[index]

    def update_priorities(self, ids: Any, values: Any) -> None:
        """Set the TD priority ``values`` (float, see the class docstring) of windows ``ids``.

        Ids repeated in one call get the mean of their values; evicted ids are ignored; ids add() never returned raise.
        """
        i = self._check_ids(ids)
        v = _to_numpy(values).astype(np.float64)
        if v.shape != i.shape:
            raise ValueError(f"ids and values must be 1-D of equal length, got shapes {i.shape} and {v.shape}.")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"priority values must be finite, got {v.tolist()}.")
        live = self._live(i)
        i, v = i[live], np.abs(v[live])
        if i.size == 0:
            return
        uniq, inverse = np.unique(i, return_inverse=True)
        mean = np.bincount(inverse, weights=v) / np.bincount(inverse)
        p = (mean + self.eps) ** self.alpha
        self.tree.update(uniq % self.capacity, p)
        self.max_priority = max(self.max_priority, float(p.max()))

    def probabilities(self, ids: Any) -> np.ndarray:
        """``P(i)`` of held windows ``ids`` (0 for evicted ones)."""
        i = self._check_ids(ids)
        p = np.where(self._live(i), self.tree.get(i % self.capacity), 0.0)
        return p / self.tree.total if self.tree.total > 0 else p

    def importance_weights(self, ids: Any) -> np.ndarray:
        """``w_i = (N * P(i)) ** -beta / max_j w_j`` for held windows ``ids``, the max over the ``ids`` given (the
        drawn batch): float64 in ``(0, 1]``, 1 for evicted ones, which are no longer part of the distribution.

        Call it before the drawn windows' priorities are updated: the weights correct the probabilities they were
        drawn with. Normalising over the batch, not over the whole buffer's least likely window, keeps the largest
        weight of every batch at 1, so the corrected loss keeps its scale (with the buffer-wide minimum a single
        rarely-drawn window would shrink every weight, and the imagined data's share of the loss with them).
        """
        i = self._check_ids(ids)
        live = self._live(i)
        p = self.tree.get(i % self.capacity)
        w = np.ones(i.shape, dtype=np.float64)
        if live.any():
            # (N P(i))^-beta / (N P_k)^-beta = (p_i / p_k)^-beta, with p_k the smallest priority among ids
            w[live] = (p[live] / p[live].min()) ** (-self.beta)
        return w

    # ------------------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the buffer exactly (held windows, ids, priorities, settings)."""
        n = len(self)
        slots = np.arange(n)
        return {
            "capacity": self.capacity, "alpha": self.alpha, "beta": self.beta, "eps": self.eps,
            "next_id": self.next_id, "max_priority": self.max_priority,
            "frames": None if self.frames is None else self.frames[:n].copy(),
            "actions": None if self.actions is None else self.actions[:n].copy(),
            "ids": self._ids[:n].copy(), "priorities": self.tree.get(slots).copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the capacity must match)."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"state holds a buffer of capacity {state['capacity']}, this one has {self.capacity}.")
        self.alpha, self.eps = float(state["alpha"]), float(state["eps"])
        self.set_beta(float(state["beta"]))
        self.next_id = int(state["next_id"])
        self.max_priority = float(state["max_priority"])
        self.tree = SumTree(self.capacity)
        self._ids = np.full(self.capacity, -1, dtype=np.int64)
        self.frames = self.actions = None
        if state["frames"] is not None:
            frames, actions = _to_numpy(state["frames"]), _to_numpy(state["actions"])
            n = frames.shape[0]
            self.frames = np.zeros((self.capacity, *frames.shape[1:]), dtype=np.uint8)
            self.actions = np.zeros((self.capacity, frames.shape[1] - 1), dtype=np.int64)
            self.frames[:n], self.actions[:n] = frames, actions
            self._ids[:n] = _to_numpy(state["ids"])
            self.tree.update(np.arange(n), _to_numpy(state["priorities"]))
