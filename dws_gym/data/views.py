"""Index views over a :class:`~dws_gym.data.store.TrajectoryStore`: clip windows and transitions.

Both views capture the store's episodes when they are made, keep the tiny per-step arrays flat in RAM (with
per-episode offsets, so lookups are vectorised), and read frames from the store's memory maps only for the
rows a batch needs, one episode at a time. A batch of frames is the only large allocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dws_gym.data.store import TrajectoryStore


class _EpisodeSet:
    """The selected episodes of a store with their per-step arrays concatenated flat."""

    def __init__(self, store: TrajectoryStore, episode_ids: Sequence[int] | None) -> None:
        ids = store.episode_ids() if episode_ids is None else [int(i) for i in episode_ids]
        metas = [store.meta(i) for i in ids]  # KeyError names a missing id
        if metas:
            shapes = {m.obs_shape for m in metas}
            if len(shapes) > 1:
                raise ValueError(
                    f"episodes have different obs shapes {sorted(shapes)}; pass episode_ids= to select one kind"
                )
            kinds = {(m.action_space["type"], tuple(m.action_space.get("shape", ()))) for m in metas}
            if len(kinds) > 1:
                raise ValueError(
                    f"episodes have different action spaces {sorted(kinds)}; pass episode_ids= to select one kind"
                )
        self.store = store
        self.ids = np.asarray(ids, dtype=np.int64)
        self.obs_shape: tuple[int, ...] = metas[0].obs_shape if metas else (0, 0, 0)
        self.lengths = np.asarray([m.length for m in metas], dtype=np.int64)
        self.frames = np.asarray([m.num_frames for m in metas], dtype=np.int64)
        self.step_offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.step_offsets[1:])
        eps = [store.steps(i) for i in ids]  # not episode(): that would hold every frame map open at once
        if eps:
            self.actions = np.concatenate([e["actions"] for e in eps])
            self.rewards = np.concatenate([e["rewards"] for e in eps])
            self.terminated = np.concatenate([e["terminated"] for e in eps])
            self.truncated = np.concatenate([e["truncated"] for e in eps])
            self.life_lost = np.concatenate([e["life_lost"] for e in eps])
        else:
            self.actions = np.zeros(0, np.int64)
            self.rewards = np.zeros(0, np.float32)
            self.terminated = self.truncated = self.life_lost = np.zeros(0, bool)

    def gather_frames(self, pos: np.ndarray, frame_idx: np.ndarray) -> np.ndarray:
        """Frames ``obs[frame_idx[i, ...]]`` of episode position ``pos[i]``, as uint8 ``(n, *idx_shape, H, W, C)``.

        Rows are grouped per episode so each memory map is touched once per batch, in episode order.
        """
        out = np.empty((len(pos), *frame_idx.shape[1:], *self.obs_shape), dtype=np.uint8)
        order = np.argsort(pos, kind="stable")
        sorted_pos = pos[order]
        cuts = np.flatnonzero(np.diff(sorted_pos)) + 1
        for rows in np.split(order, cuts):
            if len(rows) == 0:
                continue
            mm = self.store.obs(int(self.ids[pos[rows[0]]]))
            out[rows] = mm[frame_idx[rows]]
        return out


def _check_indices(indices: Any, n: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return idx


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
    return rng


class ClipDataset:
    """Clip windows of ``context + horizon`` consecutive frames, for training a simulator.

    A window starts at every ``stride``-th frame ``s`` of an episode such that the ``context`` frames and at
    least one target frame lie inside it (``s + context + 1 <= F``, F = stored frames). Frames past the episode
    end repeat its last frame with ``mask`` False; the steps leading to them have action, reward and flags 0.
    Step ``j`` is real exactly when ``mask[j + 1]`` is: for an episode whose final frame is unknown, the last
    step (it has no next frame) is therefore zeroed too (``step_records(frameless_final=True)`` keeps it).

    Items (``L = context + horizon``; ``get_batch`` adds a leading batch dimension):
        frames: uint8 ``(L, H, W, C)``.
        actions: ``(L - 1,)`` int64 (or ``(L - 1, *shape)`` float32); ``actions[j]`` leads from ``frames[j]``
            to ``frames[j + 1]``.
        rewards: float32 ``(L - 1,)`` raw; terminated, truncated, life_lost: bool ``(L - 1,)``.
        mask: bool ``(L,)``, True for real frames.
        episode_id, start: int64 scalars, the episode and the index of ``frames[0]`` in it.
    """

    def __init__(
        self,
        store: TrajectoryStore,
        context: int,
        horizon: int,
        stride: int = 1,
        *,
        episode_ids: Sequence[int] | None = None,
    ) -> None:
        for name, v in (("context", context), ("horizon", horizon), ("stride", stride)):
            if int(v) != v or int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.context, self.horizon, self.stride = int(context), int(horizon), int(stride)
        self.length = self.context + self.horizon
        self._eps = _EpisodeSet(store, episode_ids)
        room = self._eps.frames - self.context - 1  # last valid start per episode
        counts = np.where(room >= 0, room // self.stride + 1, 0)
        self._offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self._offsets[1:])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map window indices to ``(episode_ids, starts)`` int64 arrays."""
        idx = _check_indices(indices, len(self))
        pos = np.searchsorted(self._offsets, idx, side="right") - 1
        return self._eps.ids[pos], (idx - self._offsets[pos]) * self.stride

    def _windows(self, indices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(episode positions, starts, frame positions (n, L), mask (n, L))`` of the windows ``indices``."""
        idx = _check_indices(indices, len(self))
        pos = np.searchsorted(self._offsets, idx, side="right") - 1
        start = (idx - self._offsets[pos]) * self.stride
        fpos = start[:, None] + np.arange(self.length)[None, :]
        return pos, start, fpos, fpos < self._eps.frames[pos][:, None]

    def step_records(self, indices: Any = None, *, frameless_final: bool = False) -> dict[str, np.ndarray]:
        """The per-step records of the windows ``indices`` (all when ``None``) without reading any frame.

        Returns ``actions``, ``rewards``, ``terminated``, ``truncated``, ``life_lost`` ``(n, L - 1)`` (zero where
        the step is not real) and ``mask`` ``(n, L)``, as :meth:`get_batch` has them (by default): statistics over
        every window, e.g. to pick windows in which a reward falls, cost no disk reads.

        With ``frameless_final=True`` the last step of an episode whose final frame is unknown (Procgen: the step
        that reaches CoinRun's coin) keeps its real action, reward and flags although no frame follows it, and
        ``step_mask`` ``(n, L - 1)`` says which steps are real. A reward head's dreamed data needs that step: the
        dream renders a next frame for it, and the real game's label is known.
        """
        eps = self._eps
        pos, _, fpos, mask = self._windows(np.arange(len(self)) if indices is None else indices)
        step_valid = mask[:, 1:]  # step j is real iff its next frame is
        if frameless_final:  # ... or it is an episode's step without a stored next frame
            step_valid = step_valid | (fpos[:, :-1] < eps.lengths[pos][:, None])
        flat = np.where(step_valid, eps.step_offsets[pos][:, None] + fpos[:, :-1], 0)

        def steps(a: np.ndarray) -> np.ndarray:
            out = a[flat]
            out[~step_valid] = 0
            return out

        return {
            "actions": steps(eps.actions),
            "rewards": steps(eps.rewards),
            "terminated": steps(eps.terminated),
            "truncated": steps(eps.truncated),
            "life_lost": steps(eps.life_lost),
            "mask": mask,
            **({"step_mask": step_valid} if frameless_final else {}),
        }

    def get_batch(self, indices: Any, *, frameless_final: bool = False) -> dict[str, np.ndarray]:
        """Stack the windows ``indices`` (any int array-like) into a dict of batched arrays (see class doc);
        ``frameless_final`` as in :meth:`step_records` (adds ``step_mask``)."""
        eps = self._eps
        pos, start, fpos, mask = self._windows(indices)
        frames = eps.gather_frames(pos, np.minimum(fpos, eps.frames[pos][:, None] - 1))
        return {
            "frames": frames,
            **self.step_records(indices, frameless_final=frameless_final),
            "episode_id": eps.ids[pos],
            "start": start,
        }

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if i < 0:
            i += n
        batch = self.get_batch([i])
        return {k: v[0] for k, v in batch.items()}

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of ``n`` windows drawn uniformly with replacement (what :meth:`sample` reads)."""
        _check_rng(rng)
        if len(self) == 0:
            raise ValueError(
                f"no clip windows: every episode is shorter than context + 1 = {self.context + 1} frames"
            )
        return rng.integers(0, len(self), size=int(n))

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` windows drawn uniformly with replacement, batched as in :meth:`get_batch`."""
        return self.get_batch(self.draw(n, rng))


class TransitionDataset:
    """Every step ``(episode, t)`` whose next frame is stored, for off-policy / offline RL.

    ``next_obs`` is read by index (``obs[t + 1]`` of the same episode), never stored twice. The last step of an
    episode whose final frame is unknown is left out.

    With ``frame_stack = k > 1``, ``obs`` is the ``k`` frames ending at ``t`` (frames before the episode start
    repeat frame 0) and ``next_obs`` the ``k`` frames ending at ``t + 1``: shape ``(k, H, W, C)`` per item.

    Attributes:
        episode_index: int64 ``(N,)`` episode id of each transition.
        step_index: int64 ``(N,)`` step ``t`` of each transition within its episode.
    """

    def __init__(
        self,
        store: TrajectoryStore,
        *,
        episode_ids: Sequence[int] | None = None,
        frame_stack: int = 1,
        keep_unknown_final: bool = False,
    ) -> None:
        if int(frame_stack) != frame_stack or frame_stack < 1:
            raise ValueError(f"frame_stack must be a positive integer, got {frame_stack!r}")
        self.frame_stack = int(frame_stack)
        self.keep_unknown_final = bool(keep_unknown_final)
        self._eps = eps = _EpisodeSet(store, episode_ids)
        # Steps with a stored next frame; with keep_unknown_final also the last step of episodes whose final frame
        # was lost (Procgen), whose reward / termination matter to a reward head even without the frame.
        counts = eps.lengths.copy() if keep_unknown_final else np.minimum(eps.lengths, eps.frames - 1)
        self._offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self._offsets[1:])
        n = int(self._offsets[-1])
        self._pos = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        self.step_index = np.arange(n, dtype=np.int64) - self._offsets[self._pos]
        self.episode_index = eps.ids[self._pos]
        self._flat = eps.step_offsets[self._pos] + self.step_index
        self._id_to_pos = {int(e): p for p, e in enumerate(eps.ids)}
        for a in (self.step_index, self.episode_index):
            a.setflags(write=False)

    def __len__(self) -> int:
        return len(self._pos)

    def flat_index(self, episode_ids: Any, steps: Any) -> np.ndarray:
        """Transition indices of ``(episode_ids[i], steps[i])`` pairs (the inverse of the index arrays)."""
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        t = np.asarray(steps, dtype=np.int64).reshape(-1)
        if ids.shape != t.shape:
            raise ValueError(f"episode_ids and steps must have the same length, got {ids.shape} and {t.shape}")
        try:
            pos = np.asarray([self._id_to_pos[int(i)] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"episode {e.args[0]} is not in this TransitionDataset") from None
        count = self._offsets[pos + 1] - self._offsets[pos]
        if t.size and ((t < 0).any() or (t >= count).any()):
            raise IndexError("a step is outside its episode's transitions (t must be < number of transitions)")
        return self._offsets[pos] + t

    def get_batch(self, indices: Any) -> dict[str, np.ndarray]:
        """Batch of transitions.

        Returns ``obs`` and ``next_obs`` uint8 ``(n, H, W, C)`` (``(n, k, H, W, C)`` when stacking), ``action``
        ``(n,)`` int64 or ``(n, *shape)`` float32, ``reward`` float32 ``(n,)`` raw, ``terminated``,
        ``truncated``, ``life_lost`` bool ``(n,)``, and ``next_obs_known`` bool ``(n,)``: False only for the kept
        last step of an episode whose final frame is unknown, where ``next_obs`` repeats the last stored frame.
        """
        eps = self._eps
        idx = _check_indices(indices, len(self))
        pos, t, flat = self._pos[idx], self.step_index[idx], self._flat[idx]
        k = self.frame_stack
        last = eps.frames[pos] - 1  # index of the last stored frame of each transition's episode
        next_known = t + 1 <= last
        if k == 1:
            obs = eps.gather_frames(pos, t)
            next_obs = eps.gather_frames(pos, np.minimum(t + 1, last))
        else:  # k frames ending at t (clamped at the episode start), and the same shifted by one
            rel = np.arange(-k + 1, 1)[None, :]
            obs = eps.gather_frames(pos, np.maximum(t[:, None] + rel, 0))
            next_obs = eps.gather_frames(pos, np.minimum(np.maximum(t[:, None] + 1 + rel, 0), last[:, None]))
        return {
            "next_obs_known": next_known,
            "obs": obs,
            "action": eps.actions[flat],
            "reward": eps.rewards[flat],
            "next_obs": next_obs,
            "terminated": eps.terminated[flat],
            "truncated": eps.truncated[flat],
            "life_lost": eps.life_lost[flat],
        }

    def next_obs_known(self) -> np.ndarray:
        """bool ``(len,)``: whether each transition's next frame is stored (False only for the kept last step of an
        episode whose final frame is unknown), without reading any frame."""
        return self.step_index + 1 <= self._eps.frames[self._pos] - 1

    def step_records(self, indices: Any = None) -> dict[str, np.ndarray]:
        """The per-step records (``action``, ``reward``, ``terminated``, ``truncated``, ``life_lost``) of the given
        transitions (all when ``None``) without reading any frame: dataset statistics over millions of steps."""
        eps = self._eps
        flat = self._flat if indices is None else self._flat[_check_indices(indices, len(self))]
        return {
            "action": eps.actions[flat],
            "reward": eps.rewards[flat],
            "terminated": eps.terminated[flat],
            "truncated": eps.truncated[flat],
            "life_lost": eps.life_lost[flat],
        }

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if i < 0:
            i += len(self)
        batch = self.get_batch([i])
        return {k: v[0] for k, v in batch.items()}

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of ``n`` transitions drawn uniformly with replacement (what :meth:`sample` reads)."""
        _check_rng(rng)
        if len(self) == 0:
            raise ValueError("no transitions: the selected episodes have no step with a stored next frame")
        return rng.integers(0, len(self), size=int(n))

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` transitions drawn uniformly with replacement, batched as in :meth:`get_batch`."""
        return self.get_batch(self.draw(n, rng))
