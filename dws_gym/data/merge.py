"""Merge trajectory stores into one: train a simulator on several behaviour policies' data in one run.

    python -m dws_gym.data.merge --out data/coinrun-mixed --sources data/coinrun-runner:100000 data/coinrun-random

Each source is ``PATH`` or ``PATH:STEPS``: whole episodes in id order until at least ``STEPS`` steps (an existing
folder whose name ends in ``:<digits>`` is read as a path). By default the episodes each source holds out
(:func:`~dws_gym.data.split_episodes` at ``--exclude-held-out``, the fraction ``train_world_model.py`` and
``python -m dws_gym.evaluation`` use) are left out, so a simulator trained on the merged store can be scored on each
source's own held-out windows: ``python -m dws_gym.evaluation --data <source>`` (the merged store's own held-out
tail is made of the sources' training episodes).

The sources' episodes are interleaved by their relative position (a source's first 10% of episodes land in the
merged store's first 10%), so the merged store's own held-out tail has every source in proportion to its episodes.
Files are hard-linked where the filesystem allows (no extra disk) and copied otherwise. Each merged episode names its
origin in ``extra["merged_from"]`` (store, episode id, length, return, write time). Killed and re-run with the same
flags, the merge continues where it stopped and adds no episode twice; an output folder holding anything else (other
data, a merge with other flags, a source rewritten since) is refused. Run one merge per output folder at a time.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
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
    """``"PATH"`` → ``(PATH, None)``; ``"PATH:STEPS"`` → ``(PATH, STEPS)``. An existing folder is always a path.

    Raises:
        ValueError: the budget after ``:`` is not positive.
    """
    if Path(spec).exists():
        return spec, None
    match = re.fullmatch(r"(.+):(-?[0-9_]+)", spec)
    if match is None:
        return spec, None
    steps = int(match.group(2))
    if steps <= 0:
        raise ValueError(f"source {spec!r}: the step budget after ':' must be positive")
    return match.group(1), steps


def _signature(meta: Any) -> tuple:
    """What must agree between merged episodes: frames and the action set (an inferred ``n`` equals a given one)."""
    space = {k: v for k, v in meta.action_space.items() if k != "inferred"}
    return tuple(meta.obs_shape), sorted(space.items()), meta.action_meanings


def _merged_from(origin: str, ep_id: int, meta: Any) -> dict[str, Any]:
    """A merged episode's ``extra["merged_from"]``: its source store and id, and what identifies the source episode
    beyond its id (a rewritten source no longer matches)."""
    return {"store": origin, "episode_id": int(ep_id), "length": int(meta.length),
            "return": float(meta.episode_return), "created_at": float(meta.created_at)}


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
        if budget is not None:
            taken, steps = [], 0
            for i in ids:
                if steps >= budget:
                    break
                taken.append(i)
                steps += store.meta(i).length
            if steps < budget:
                warnings.warn(f"{store.root} has {steps} {env_id} training steps, fewer than its budget {budget}: "
                              "all of them are merged", stacklevel=2)
            ids = taken
        for i in ids:
            signature = _signature(store.meta(i))
            if first is None:
                first = (signature, store.root, i)
            elif signature != first[0]:
                raise ValueError(
                    f"episode {i} of {store.root} has frames {signature[0]} and actions {dict(signature[1])} "
                    f"{signature[2]}; episode {first[2]} of {first[1]} has {first[0][0]} and {dict(first[0][1])} "
                    f"{first[0][2]}: merge stores of one game, frame size and action set"
                )
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
    have = out.episode_ids()
    # A resume continues this very plan: out must hold exactly its first episodes, in order, unchanged since.
    for k, new_id in enumerate(have):
        origin = out.meta(new_id).extra.get("merged_from")
        expected = None
        if k < len(plan):
            s, ep = plan[k]
            expected = _merged_from(origins[s], ep, sources[s].meta(ep))
        if origin != expected:
            raise ValueError(
                f"{args.out} already holds episode {new_id}, which this merge would not have written there "
                f"({'from ' + str(origin) if isinstance(origin, dict) else 'not merged'}; expected "
                f"{expected or 'nothing'}): merge into a new folder, or re-run with the flags of the merge that "
                "made it (a source changed since cannot be resumed)"
            )
    t0 = time.perf_counter()
    added = 0
    steps: dict[str, int] = {p: 0 for p, _ in specs}
    for k, (s, ep) in enumerate(plan):
        meta = sources[s].meta(ep)
        steps[specs[s][0]] += meta.length
        if k < len(have):
            continue
        out.add_episode_from(sources[s], ep, link=args.link, extra={"merged_from": _merged_from(origins[s], ep, meta)})
        added += 1
    kept = len(have)
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
