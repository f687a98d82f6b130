"""Bring-your-own data: split flat RL-buffer arrays into episodes and add them to a store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dws_gym.data.store import TrajectoryStore


def import_arrays(
    store: TrajectoryStore,
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    *,
    env_id: str,
    final_obs: np.ndarray | None = None,
    life_lost: np.ndarray | None = None,
    action_space: Mapping[str, Any] | Any | None = None,
    action_meanings: Sequence[str] | None = None,
    policy: str = "imported",
    synthetic: bool = False,
    source_simulator: str | None = None,
    extra: Mapping[str, Any] | None = None,
    drop_unfinished: bool = False,
) -> list[int]:
    """Import flat transition arrays (the usual replay-buffer layout) as episodes; returns the new ids.

    Expected layout, ``N`` rows in time order, episodes back to back:

    - ``obs[i]``: uint8 ``(N, H, W, C)``, the observation in which ``actions[i]`` was taken.
    - ``actions[i]``: ``(N,)`` ints or ``(N, *shape)`` floats; ``rewards[i]``: ``(N,)`` raw reward of that step.
    - ``terminated[i]``, ``truncated[i]``: ``(N,)`` bool, what that step returned. An episode ends after every
      row where either is True; the next row starts a new episode (its ``obs`` is the reset observation).
      Rows after the last such row form an unfinished episode (kept with both flags False at its last step,
      unless ``drop_unfinished``).
    - ``life_lost[i]``: optional ``(N,)`` bool.
    - ``final_obs``: the frame after the last step of each episode, which ``obs`` does not hold. Either
      ``(N, H, W, C)`` aligned with the rows (a ``next_obs`` buffer; only rows that end an episode, and the
      last row, are read), or ``(E, H, W, C)`` with one row per finished episode in order (E = number of rows
      with a done flag; the unfinished tail then has no final frame). ``None`` when the final frames were not
      kept (e.g. Procgen through gym3): every episode is stored with ``final_frame_known=False``.

    Within an episode the frame after step ``i`` is ``obs[i + 1]``. Each episode is written atomically; the
    import as a whole is not (ids already returned by an interrupted import stay in the store).
    Other keyword arguments are passed to :meth:`TrajectoryStore.add_episode` for every episode.

    Raises:
        ValueError: on arrays of mismatched length or a ``final_obs`` with neither N nor E rows.
    """
    obs = np.asarray(obs) if not isinstance(obs, np.ndarray) else obs  # keep memmaps as they are
    actions, rewards = np.asarray(actions), np.asarray(rewards)
    term, trunc = np.asarray(terminated), np.asarray(truncated)
    n = len(obs)
    if n == 0:
        raise ValueError("obs is empty: nothing to import")
    named = {"actions": actions, "rewards": rewards, "terminated": term, "truncated": trunc}
    if life_lost is not None:
        named["life_lost"] = np.asarray(life_lost)
    for name, a in named.items():
        if a.ndim < 1 or len(a) != n:
            raise ValueError(f"{name} must have one row per obs row ({n}), got shape {a.shape}")
    for name in ("terminated", "truncated"):
        a = named[name]
        if a.dtype != np.bool_ and not (np.issubdtype(a.dtype, np.integer) and np.isin(a, (0, 1)).all()):
            raise ValueError(f"{name} must be bool (or 0/1 integers), got dtype {a.dtype}")
    done = term.astype(bool) | trunc.astype(bool)
    ends = np.flatnonzero(done)
    segments = []
    start = 0
    for e in ends:
        segments.append((start, int(e) + 1, True))
        start = int(e) + 1
    if start < n and not drop_unfinished:
        segments.append((start, n, False))

    aligned = False
    if final_obs is not None:
        final_obs = np.asarray(final_obs) if not isinstance(final_obs, np.ndarray) else final_obs
        if final_obs.shape[1:] != obs.shape[1:]:
            raise ValueError(f"final_obs rows must have the shape of obs rows {obs.shape[1:]}, got {final_obs.shape}")
        if len(final_obs) == n:
            aligned = True
        elif len(final_obs) != len(ends):
            raise ValueError(
                f"final_obs must have {n} rows (aligned with obs, a next_obs buffer) or {len(ends)} rows "
                f"(one per finished episode), got {len(final_obs)}"
            )

    if action_space is None and action_meanings is None and np.issubdtype(np.asarray(actions).dtype, np.integer):
        # Decide the discrete action count once for the whole dataset, not per episode.
        action_space = {"type": "discrete", "n": int(np.max(actions)) + 1 if len(actions) else 1, "inferred": True}
    ids: list[int] = []
    for k, (a, b, finished) in enumerate(segments):
        final = None
        if final_obs is not None:
            if aligned:
                final = final_obs[b - 1]
            elif finished:
                final = final_obs[k]
        frames = obs[a:b] if final is None else np.concatenate([obs[a:b], np.asarray(final)[None]])
        ids.append(
            store.add_episode(
                frames,
                actions[a:b],
                rewards[a:b],
                term[a:b],
                trunc[a:b],
                None if life_lost is None else named["life_lost"][a:b],
                env_id=env_id,
                action_meanings=action_meanings,
                action_space=action_space,
                policy=policy,
                synthetic=synthetic,
                source_simulator=source_simulator,
                final_frame_known=final is not None,
                extra=extra,
            )
        )
    return ids
