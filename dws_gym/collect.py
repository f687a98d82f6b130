"""Collect real-environment trajectories into a trajectory store.

    python -m dws_gym.collect --env-id ALE/Breakout-v5 --steps 100000 --out data/breakout --num-envs 8
    python -m dws_gym.collect --env-id procgen/coinrun --steps 100000 --out data/coinrun --policy runs/ppo/policy

``--steps`` counts agent steps (each is 4 emulator frames under ALE's frameskip). The policy is uniform random unless
``--policy`` names a checkpoint written by :func:`dws_gym.agents.save_policy`. Every finished episode is written
atomically as soon as it ends; re-running into the same folder appends, never overwrites, and draws seeds no earlier
run used (each episode records its run's ``seed``, ``num_envs`` and ``env_index`` in ``extra``), so a re-run never
repeats earlier episodes. Episodes still running when the step budget is reached are written too, marked truncated
(``extra["cut_by_collector"]``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from dws_gym.data import TrajectoryStore
from dws_gym.envs.real import make_real_env, parse_env_id


@dataclass
class CollectArgs:
    """Collect real trajectories into a trajectory store (appends to an existing store)."""

    env_id: str = "ALE/Breakout-v5"
    """real env id: ALE/<Game>-v5 or procgen/<game>"""
    steps: int = 100_000
    """agent steps to record, summed over envs"""
    out: str = "data/breakout"
    """trajectory store folder (created if missing; appended to if present)"""
    num_envs: int = 8
    """envs stepped as one batch"""
    policy: str | None = None
    """policy checkpoint folder (dws_gym.agents.save_policy), or a scripted policy `scripted:<name>[:eps]`
    (dws_gym.scripted, e.g. `scripted:breakout-tracker:0.25`); uniform random if omitted"""
    seed: int = 0
    """seed of the envs and the policy's sampling; appending to a store that already holds episodes moves it to the
    first seed no earlier run used (CollectResult.seed says which)"""
    deterministic: bool = False
    """take the policy's most likely action instead of sampling (a scripted policy drops its random actions)"""
    num_levels: int = 0
    """Procgen only: number of levels (0 = unlimited)"""
    start_level: int = 0
    """Procgen only: first level seed"""
    distribution_mode: str = "easy"
    """Procgen only: easy | hard | extreme | memory | exploration"""
    repeat_action_probability: float = 0.0
    """ALE only: sticky-action probability"""
    progress: bool = True
    """show a progress bar"""


@dataclass
class CollectResult:
    """What one collection run wrote."""

    steps: int
    episodes: int
    seconds: float
    steps_per_second: float
    bytes_on_disk: int
    episode_ids: list[int]
    seed: int
    """the seed the run used: ``CollectArgs.seed`` in a fresh store, else the first one no earlier run used"""


class _EpisodeBuffer:
    """Per-env lists of one running episode; ``obs`` holds one more frame than there are actions."""

    def __init__(self, first_obs: np.ndarray) -> None:
        self.obs = [first_obs]
        self.actions: list[int] = []
        self.rewards: list[float] = []
        self.terminated: list[bool] = []
        self.truncated: list[bool] = []
        self.life_lost: list[bool] = []

    def add(self, action: int, reward: float, term: bool, trunc: bool, life_lost: bool) -> None:
        self.actions.append(action)
        self.rewards.append(reward)
        self.terminated.append(term)
        self.truncated.append(trunc)
        self.life_lost.append(life_lost)

    def __len__(self) -> int:
        return len(self.actions)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fresh_seed(out: str | Path, seed: int, num_envs: int) -> int:
    """The seed of a collection into ``out``: ``seed`` itself in a new or empty store, else the first seed ``b >= seed``
    whose block ``[b, b + num_envs)`` shares no seed with an earlier run recorded in the store.

    A run seeded ``b`` with ``n`` envs uses the seeds ``b .. b + n - 1`` (one per env stream), so blocks are kept
    disjoint. Episodes without a record (other sources, older collectors) move the start to ``seed + their count``:
    a finished collection writes at least one episode per env, so this passes the block of an unrecorded run that
    used the same seed. Without this, re-running with the same arguments would append exact copies of earlier
    episodes, and copies that fall into the held-out split leak training data into evaluation.
    """
    if not (Path(out) / "episodes").is_dir():
        return seed
    store = TrajectoryStore(out)
    used: set[int] = set()
    unrecorded = 0
    for ep_id in store.episode_ids():
        extra = store.meta(ep_id).extra
        start, n = extra.get("seed"), extra.get("num_envs", 1)
        if isinstance(start, int) and not isinstance(start, bool):
            used.update(range(start, start + (n if isinstance(n, int) and n >= 1 else 1)))
        else:
            unrecorded += 1
    base = seed + unrecorded
    while any(base + i in used for i in range(num_envs)):
        base += 1
    return base


def load_behaviour_policy(path: str | None, num_actions: int, seed: int, env_id: str) -> tuple[Any, int, str]:
    """The acting policy named by ``--policy``: ``(policy, frame_stack, tag)``.

    ``path`` is ``None`` (uniform random), ``scripted:<name>[:eps]`` (:mod:`dws_gym.scripted`) or a
    :func:`~dws_gym.agents.save_policy` folder; ``tag`` is what episode metadata records as the policy.
    """
    from dws_gym.agents import RandomPolicy, load_policy

    if path is None:
        return RandomPolicy(num_actions, seed=seed), 1, "random"
    if path.startswith("scripted:"):
        from dws_gym.scripted import make_scripted_policy

        policy = make_scripted_policy(path, env_id, seed=seed)
        return policy, 1, policy.tag
    policy = load_policy(path)
    frame_stack = int(getattr(policy.config, "frame_stack", 1))
    return policy, frame_stack, f"policy:{Path(path).name}"


def collect(args: CollectArgs) -> CollectResult:
    """Run the collection described by ``args`` and return what was written."""
    import torch

    if args.steps <= 0:
        raise ValueError(f"--steps must be positive, got {args.steps}.")
    env_kwargs: dict[str, Any] = {}
    if args.env_id.startswith("procgen"):
        env_kwargs.update(
            num_levels=args.num_levels, start_level=args.start_level, distribution_mode=args.distribution_mode
        )
    else:
        env_kwargs.update(repeat_action_probability=args.repeat_action_probability)
    # Build the env once without stacking to learn the action count, then with the policy's stack.
    probe = make_real_env(args.env_id, 1, **env_kwargs)
    num_actions = int(probe.single_action_space.n)
    meanings = list(probe.action_meanings)
    probe.close()
    seed = fresh_seed(args.out, args.seed, args.num_envs)
    policy, frame_stack, policy_tag = load_behaviour_policy(args.policy, num_actions, seed, args.env_id)
    saved_policy = args.policy is not None and not args.policy.startswith("scripted:")
    # What each episode records of how it was made: the policy's own record (its training steps, levels and
    # evaluated returns, when a training script saved them) and, for Procgen, the levels played.
    provenance: dict[str, Any] = {"deterministic": args.deterministic}
    if saved_policy:
        record = dict(getattr(policy.config, "extra", {}) or {})
        provenance["behaviour_policy"] = {"path": str(Path(args.policy).resolve()), **{
            k: record[k] for k in ("algorithm", "global_step", "levels", "evaluation", "run_name") if k in record}}
    if "num_levels" in env_kwargs:  # Procgen: the level range and mode built above
        provenance["levels"] = dict(env_kwargs)
    else:  # ALE: with sticky actions the stored action is not always the one the emulator ran
        provenance["repeat_action_probability"] = float(args.repeat_action_probability)
    envs = make_real_env(args.env_id, args.num_envs, frame_stack=frame_stack, **env_kwargs)
    if saved_policy:
        from dws_gym.agents import check_policy_matches

        check_policy_matches(policy, envs.single_observation_space, envs.single_action_space)
    mode = AutoresetMode(envs.metadata["autoreset_mode"])
    store = TrajectoryStore(args.out, create=True)
    generator = torch.Generator().manual_seed(seed)

    def latest(o: np.ndarray) -> np.ndarray:
        return o[:, -1] if frame_stack > 1 else o

    def write(buf: _EpisodeBuffer, env_index: int, final_known: bool, extra: dict[str, Any] | None = None) -> int:
        return store.add_episode(
            np.stack(buf.obs),
            np.asarray(buf.actions, dtype=np.int64),
            np.asarray(buf.rewards, dtype=np.float32),
            np.asarray(buf.terminated, dtype=bool),
            np.asarray(buf.truncated, dtype=bool),
            np.asarray(buf.life_lost, dtype=bool),
            env_id=args.env_id,
            action_meanings=meanings,
            action_space={"type": "discrete", "n": num_actions},
            policy=policy_tag,
            final_frame_known=final_known,
            extra={"seed": seed, "num_envs": args.num_envs, "env_index": env_index, **provenance, **(extra or {})},
        )

    # ale-py's vector env ends its frame skip at game over (and at its frame cap) before it grabs the screen, so the
    # frame returned with an ALE episode's end is not the final frame (mostly it repeats the step before's). Such an
    # episode is stored as Procgen's are, without a final frame (its last step keeps its reward and flags).
    stale_final = parse_env_id(args.env_id)[0] == "ale"
    obs, _ = envs.reset(seed=seed)
    frames = latest(obs)
    bufs = [_EpisodeBuffer(frames[i].copy()) for i in range(args.num_envs)]
    awaiting_reset = np.zeros(args.num_envs, dtype=bool)  # NEXT_STEP: this env's next step is a reset step
    written: list[int] = []
    recorded = 0
    bar = None
    if args.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.steps, desc=f"collect {args.env_id}", unit="step", smoothing=0.05, mininterval=1.0)
    start = time.perf_counter()
    try:
        while recorded < args.steps:
            with torch.no_grad():
                actions = np.asarray(policy.act(obs, deterministic=args.deterministic, generator=generator))
            obs, rewards, terms, truncs, info = envs.step(actions)
            frames = latest(obs)
            life_lost = np.asarray(info.get("life_lost", terms), dtype=bool)
            new_steps = 0
            for i in range(args.num_envs):
                if awaiting_reset[i]:  # the env ignored this action and returned a new episode's first frame
                    bufs[i] = _EpisodeBuffer(frames[i].copy())
                    awaiting_reset[i] = False
                    continue
                bufs[i].add(int(actions[i]), float(rewards[i]), bool(terms[i]), bool(truncs[i]), bool(life_lost[i]))
                new_steps += 1
                if not (terms[i] or truncs[i]):
                    bufs[i].obs.append(frames[i].copy())
                elif mode is AutoresetMode.NEXT_STEP:
                    if not stale_final:
                        bufs[i].obs.append(frames[i].copy())
                    written.append(write(bufs[i], i, final_known=not stale_final))
                    awaiting_reset[i] = True
                else:  # SAME_STEP: the returned frame already belongs to the next episode
                    written.append(write(bufs[i], i, final_known=False))
                    bufs[i] = _EpisodeBuffer(frames[i].copy())
            recorded += new_steps
            if bar is not None:
                bar.update(new_steps)
                bar.set_postfix(episodes=len(written), refresh=False)
        for i, buf in enumerate(bufs):
            if len(buf) > 0 and not awaiting_reset[i]:
                buf.truncated[-1] = True
                written.append(write(buf, i, final_known=True, extra={"cut_by_collector": True}))
    finally:
        if bar is not None:
            bar.close()
        envs.close()
    seconds = time.perf_counter() - start
    return CollectResult(
        steps=recorded,
        episodes=len(written),
        seconds=seconds,
        steps_per_second=recorded / max(seconds, 1e-9),
        bytes_on_disk=_dir_bytes(Path(args.out)),
        episode_ids=written,
        seed=seed,
    )


def main(argv: list[str] | None = None) -> CollectResult:
    """Command-line entry point (``python -m dws_gym.collect`` / ``dws-collect``)."""
    import tyro

    args = tyro.cli(CollectArgs, args=argv)
    result = collect(args)
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "episode_ids"}
    print(
        f"collected {result.steps} steps in {result.episodes} episodes into {args.out}: "
        f"{result.seconds:.1f} s, {result.steps_per_second:.0f} steps/s, "
        f"{result.bytes_on_disk / 1e6:.1f} MB on disk ({summary})"
    )
    return result



def cli() -> None:
    """The ``dws-collect`` console script: :func:`main` with exit status 0 on success (a script's return value would
    become its exit status)."""
    main()


if __name__ == "__main__":
    main()
