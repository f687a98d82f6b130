"""Play a policy in the real env and report its episodes: the evaluation every training script shares.

Procgen runs are scored on named level ranges, the generalisation protocol of Cobbe et al. (2020) that the offline
Procgen benchmark (Mediratta et al. 2023) uses: levels 0-199 are the training levels, levels from 250 on are unseen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from dws_gym.envs.real import make_real_env, parse_env_id

__all__ = ["PROCGEN_LEVELS", "below_test_levels", "describe_levels", "evaluate_on_levels", "evaluate_policy", "level_ranges",
           "run_episodes"]

PROCGEN_LEVELS: dict[str, dict[str, int]] = {
    "train": {"start_level": 0, "num_levels": 200},
    # Procgen ignores start_level when num_levels is 0 (it then draws any level seed, 0-199 included), so the unseen
    # range is a finite one from 250: level seeds 250 .. 2,000,000,249 (Procgen's seeds are 32-bit signed ints).
    "test": {"start_level": 250, "num_levels": 2_000_000_000},
}
"""Procgen level ranges: ``train`` = levels 0-199, ``test`` = levels >= 250 (never seen in training data)."""


def below_test_levels(start_level: int, num_levels: int) -> bool:
    """Whether the Procgen levels ``start_level .. start_level + num_levels - 1`` all lie below the ``test`` range, so
    that its levels are unseen for a policy trained on them (``num_levels`` 0 means every level: False)."""
    return 0 < num_levels and start_level + num_levels <= PROCGEN_LEVELS["test"]["start_level"]


def level_ranges(env_id: str) -> dict[str, dict[str, int]]:
    """The named level ranges an evaluation of ``env_id`` reports: Procgen's ``train`` / ``test``, else ``{"real": {}}``."""
    return dict(PROCGEN_LEVELS) if parse_env_id(env_id)[0] == "procgen" else {"real": {}}


@torch.no_grad()
def evaluate_policy(policy: Any, env_id: str, episodes: int, *, frame_stack: int = 1, seed: int = 0,
                    max_steps: int = 27_000, deterministic: bool = False, num_envs: int = 8,
                    env_kwargs: dict[str, Any] | None = None) -> tuple[list[float], list[int]]:
    """Run ``episodes`` episodes of the real env under ``policy`` and return their raw returns and lengths.

    Args:
        policy: anything with ``act(obs, deterministic=...) -> actions`` taking the env's uint8 observations.
        env_id: ``ALE/<Game>-v5`` or ``procgen/<game>``.
        episodes: episodes to play, split evenly over the envs (see :func:`run_episodes`).
        frame_stack: the observation stack the policy expects.
        seed: seed of the env reset.
        max_steps: an episode still running after this many steps is reported as it stands and its env stops.
        deterministic: take the policy's most likely action.
        num_envs: envs stepped together (at most ``episodes``).
        env_kwargs: passed to :func:`~dws_gym.envs.real.make_real_env` (e.g. a Procgen level range).
    """
    if episodes <= 0:
        return [], []
    n = max(1, min(episodes, num_envs))
    envs = make_real_env(env_id, n, frame_stack=frame_stack, **(env_kwargs or {}))
    try:
        return run_episodes(policy, envs, episodes, seed=seed, max_steps=max_steps, deterministic=deterministic)
    finally:
        envs.close()


@torch.no_grad()
def run_episodes(policy: Any, envs: Any, episodes: int, *, seed: int = 0, max_steps: int = 27_000,
                 deterministic: bool = False) -> tuple[list[float], list[int]]:
    """Play ``episodes`` episodes of a gymnasium ``VectorEnv`` under ``policy``: ``(returns, lengths)``.

    Each env plays a fixed quota of consecutive episodes from the reset (``episodes`` split as evenly as the envs
    allow) and its later episodes are ignored. Keeping the first ``episodes`` episodes to end, whichever env they
    come from, would favour short episodes: a policy whose failures are long (a Procgen timeout at return 0) would
    be scored mostly on its quick successes. An episode still running after ``max_steps`` steps is reported as it
    stands and its env stops (it cannot be reset alone), so a run can report fewer than ``episodes``.
    """
    if episodes <= 0:
        return [], []
    n = envs.num_envs
    quota = np.full(n, episodes // n)
    quota[: episodes % n] += 1
    next_step = AutoresetMode(envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)) is AutoresetMode.NEXT_STEP
    obs, _ = envs.reset(seed=seed)
    ret, length = np.zeros(n), np.zeros(n, dtype=np.int64)
    active, prev_done = quota > 0, np.zeros(n, bool)
    played = np.zeros(n, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    while active.any():
        actions = policy.act(obs, deterministic=deterministic)
        obs, reward, term, trunc, _ = envs.step(np.asarray(actions.cpu() if torch.is_tensor(actions) else actions))
        valid = active & ~prev_done if next_step else active  # NEXT_STEP: a reset step belongs to no episode
        ret += reward * valid
        length += valid
        done = term | trunc
        capped = valid & ~done & (length >= max_steps)
        for i in np.flatnonzero(valid & (done | capped)):
            returns.append(float(ret[i]))
            lengths.append(int(length[i]))
            ret[i], length[i] = 0.0, 0
            played[i] += 1
        active &= ~capped & (played < quota)  # a capped env cannot be reset alone: it stops contributing
        prev_done = done
    return returns, lengths


def evaluate_on_levels(policy: Any, env_id: str, episodes: int, *, frame_stack: int = 1, seed: int = 0,
                       max_steps: int = 27_000, deterministic: bool = False,
                       distribution_mode: str = "easy") -> dict[str, dict[str, float]]:
    """:func:`evaluate_policy` on each of :func:`level_ranges`: ``{range: {"return", "return_std", "length",
    "episodes"}}`` (Procgen: ``train`` = levels 0-199, ``test`` = levels >= 250; ALE: ``real``)."""
    procgen = parse_env_id(env_id)[0] == "procgen"
    out: dict[str, dict[str, float]] = {}
    for name, levels in level_ranges(env_id).items():
        kwargs = {**levels, "distribution_mode": distribution_mode} if procgen else {}
        returns, lengths = evaluate_policy(policy, env_id, episodes, frame_stack=frame_stack, seed=seed,
                                           max_steps=max_steps, deterministic=deterministic, env_kwargs=kwargs)
        out[name] = {"return": float(np.mean(returns)) if returns else float("nan"),
                     "return_std": float(np.std(returns)) if returns else float("nan"),
                     "length": float(np.mean(lengths)) if lengths else float("nan"), "episodes": len(returns)}
    return out


def _range_name(name: str) -> str:
    """How a level range reads in a sentence: ``train levels 0-199``, ``levels >= 250``, ``the real game``."""
    levels = PROCGEN_LEVELS.get(name)
    if levels is None:
        return "the real game" if name == "real" else name
    first, count = levels["start_level"], levels["num_levels"]
    return f"{name} levels {first}-{first + count - 1}" if 0 < count < 1_000_000 else f"levels >= {first}"


def describe_levels(result: dict[str, dict[str, float]]) -> str:
    """One line for an :func:`evaluate_on_levels` result, e.g. ``mean return 7.40 +- 4.4 on train levels 0-199
    (50 episodes), 5.10 +- 5.0 on levels >= 250 (50 episodes)``."""
    parts = [f"{r['return']:.2f} +- {r['return_std']:.2f} on {_range_name(name)} ({r['episodes']} episodes)"
             for name, r in result.items()]
    return "mean return " + ", ".join(parts)
