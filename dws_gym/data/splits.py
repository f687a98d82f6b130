"""Train / held-out splits of a trajectory store's episodes, by episode id.

The held-out episodes are the ones a simulator never trains on and is evaluated on
(:func:`dws_gym.evaluation.evaluate_held_out`); ``train_world_model.py`` and ``python -m dws_gym.evaluation``
split a store the same way, so a simulator is scored on episodes it never saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dws_gym.checks import check_positive_int

if TYPE_CHECKING:
    from dws_gym.data.store import TrajectoryStore

__all__ = ["describe_policies", "env_episodes", "split_episodes"]


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
    min_held_out = check_positive_int("min_held_out", min_held_out)
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


def env_episodes(store: TrajectoryStore, env_id: str) -> list[int]:
    """The ids of the store's episodes of ``env_id``, ascending.

    Raises:
        ValueError: the store holds none (the message names the env ids it does hold).
    """
    ours = sorted(int(i) for i in store.episode_ids() if store.meta(i).env_id == env_id)
    if not ours:
        found = sorted({store.meta(i).env_id for i in store.episode_ids()})
        raise ValueError(f"{store.root} holds no {env_id} episodes (it has {found}); pass a store of that game")
    return ours


def describe_policies(store: TrajectoryStore, episode_ids: Sequence[int] | None = None) -> str:
    """Which behaviour policies acted in ``episode_ids`` (default: every episode), by steps: ``"random"`` for one
    policy, ``"scripted:procgen-runner 100,010 steps (52%), random 92,076 steps (48%)"`` for a merged store
    (:mod:`dws_gym.data.merge`), most steps first. A simulator card names its data with this."""
    ids = list(store.episode_ids() if episode_ids is None else episode_ids)
    steps: dict[str, int] = {}
    for i in ids:
        meta = store.meta(i)
        steps[meta.policy] = steps.get(meta.policy, 0) + int(meta.length)
    if len(steps) <= 1:
        return next(iter(steps), "none")
    total = sum(steps.values())
    ranked = sorted(steps.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} {n:,} steps ({n / total:.0%})" for name, n in ranked)
