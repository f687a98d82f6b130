"""Merge trajectory stores into one: train a simulator on several behaviour policies' data in one run.

    python -m dws_gym.data.merge --out data/coinrun-mixed --sources data/coinrun-runner:200000 data/coinrun-random

Each source is ``PATH`` or ``PATH:STEPS`` (take whole episodes, in id order, until ``STEPS`` steps). By default
the episodes each source holds out (:func:`~dws_gym.data.split_episodes` with ``--exclude-held-out``, the fraction
``train_world_model.py`` and ``python -m dws_gym.evaluation`` use) are left out, so a simulator trained on the merged
store can still be scored on every source's held-out windows.

The sources' episodes are interleaved by their relative position (a source's first 10% of episodes land in the
merged store's first 10%), so the merged store's own held-out tail has every source in its share. Files are
hard-linked where the stores share a filesystem (no extra disk) and copied otherwise. Each merged episode names its
origin in ``extra["merged_from"]``; killed and re-run with the same flags, the merge continues where it stopped and
adds no episode twice.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dws_gym.data.splits import env_episodes, split_episodes
from dws_gym.data.store import TrajectoryStore

__all__ = ["MergeArgs", "MergeResult", "merge_stores", "parse_source", "plan_merge"]


@dataclass
class MergeArgs:
    """Merge trajectory stores into one (appends to an existing store)."""

    out: str
    """the merged store's folder (created if missing)"""
    sources: list[str] = field(default_factory=list)
    """source stores, each PATH or PATH:STEPS (whole episodes in id order until STEPS steps)"""
    env_id: str | None = None
    """the game to take (default: the first source's, which every source must hold)"""
    exclude_held_out: float = 0.1
    """leave out each source's held-out episodes at this fraction (0: take them too)"""
    link: bool = True
    """hard-link the files where possible (no extra disk); --no-link copies them"""


@dataclass
class MergeResult:
    """What :func:`merge_stores` did."""

    out: str
    added: int
    """episodes added by this call"""
    kept: int
    """episodes of the plan already in ``out`` (an earlier, interrupted merge)"""
    steps_by_source: dict[str, int]
    """steps of the plan per source path (added and kept)"""
    seconds: float


def parse_source(spec: str) -> tuple[str, int | None]:
    """``"PATH"`` → ``(PATH, None)``; ``"PATH:STEPS"`` → ``(PATH, STEPS)``. A tail after the last ``:`` that is not
    a number stays part of the path."""
    path, sep, tail = spec.rpartition(":")
    if sep and path and tail.strip().isdigit():
        steps = int(tail)
        if steps <= 0:
            raise ValueError(f"source {spec!r}: the step budget after ':' must be positive")
        return path, steps
    return spec, None


def _origin(path: str | Path) -> str:
    return str(Path(path).resolve())


def plan_merge(
    sources: list[TrajectoryStore],
    budgets: list[int | None],
    env_id: str,
    exclude_held_out: float = 0.1,
) -> list[tuple[int, int]]:
    """The merge order: ``(source index, episode id)`` pairs, each source's episodes spread by relative position.

    Raises:
        ValueError: a source holds no ``env_id`` episodes, too few to split, or its frames / actions differ from the
            first source's.
    """
    if len(sources) != len(budgets):
        raise ValueError("one budget (or None) per source")
    if not 0.0 <= exclude_held_out < 1.0:
        raise ValueError(f"exclude_held_out must be in [0, 1), got {exclude_held_out}")
    keyed: list[tuple[float, int, int]] = []
    first = None
    for s, (store, budget) in enumerate(zip(sources, budgets)):
        ids = env_episodes(store, env_id)
        if exclude_held_out > 0:
            ids, _ = split_episodes(store, exclude_held_out, episode_ids=ids)
        meta = store.meta(ids[0])
        shape = (tuple(meta.obs_shape), meta.action_space, meta.action_meanings)
        if first is None:
            first = shape
        elif shape != first:
            raise ValueError(
                f"{store.root}'s {env_id} episodes have frames {shape[0]} and actions {shape[1]} {shape[2]}, the "
                f"first source's {first[0]} and {first[1]} {first[2]}: merge stores of one game and action set"
            )
        if budget is not None:
            taken, steps = [], 0
            for i in ids:
                if steps >= budget:
                    break
                taken.append(i)
                steps += store.meta(i).length
            ids = taken
        keyed += [((rank + 0.5) / len(ids), s, i) for rank, i in enumerate(ids)]
    keyed.sort()
    return [(s, i) for _, s, i in keyed]


def merge_stores(args: MergeArgs) -> MergeResult:
    """Merge ``args.sources`` into ``args.out`` (see the module docstring); returns what it did.

    Raises:
        ValueError: no sources, a source given twice or equal to ``out``, or the checks of :func:`plan_merge`.
        FileNotFoundError: a source store does not exist.
    """
    if not args.sources:
        raise ValueError("name at least one source store (--sources PATH[:STEPS] ...)")
    specs = [parse_source(s) for s in args.sources]
    origins = [_origin(p) for p, _ in specs]
    if len(set(origins)) != len(origins):
        raise ValueError(f"a source is named twice: {args.sources}")
    if _origin(args.out) in origins:
        raise ValueError(f"--out {args.out} is also a source: merge into a new folder")
    sources = [TrajectoryStore(p) for p, _ in specs]
    env_id = args.env_id
    if env_id is None:
        first_ids = sources[0].episode_ids()
        if not first_ids:
            raise ValueError(f"{specs[0][0]} holds no episodes")
        env_id = sources[0].meta(first_ids[0]).env_id
    plan = plan_merge(sources, [b for _, b in specs], env_id, args.exclude_held_out)
    out = TrajectoryStore(args.out, create=True)
    done: set[tuple[str, int]] = set()
    for i in out.episode_ids():
        origin = out.meta(i).extra.get("merged_from")
        if isinstance(origin, dict):
            done.add((str(origin.get("store")), int(origin.get("episode_id", -1))))
    t0 = time.perf_counter()
    added = kept = 0
    steps: dict[str, int] = {p: 0 for p, _ in specs}
    for s, ep in plan:
        steps[specs[s][0]] += sources[s].meta(ep).length
        if (origins[s], ep) in done:
            kept += 1
            continue
        out.add_episode_from(sources[s], ep, link=args.link,
                             extra={"merged_from": {"store": origins[s], "episode_id": int(ep)}})
        added += 1
    return MergeResult(out=args.out, added=added, kept=kept, steps_by_source=steps,
                       seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> MergeResult:
    """Command-line entry point (``python -m dws_gym.data.merge``)."""
    import tyro

    args = tyro.cli(MergeArgs, args=argv, description=__doc__)
    try:
        result = merge_stores(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    summary: dict[str, Any] = dataclasses.asdict(result)
    print(f"merged {result.added} new episodes into {args.out} ({result.kept} already there) in "
          f"{result.seconds:.1f} s; steps per source: {summary['steps_by_source']}")
    return result


if __name__ == "__main__":
    main()
