"""Synthesize transitions with a DWS simulator: the data augmentation of the paper's offline experiment.

Dreams start from real windows of a dataset (:class:`~dws_gym.imagination.StoreStartSampler`), a behaviour policy
acts in them (optionally epsilon-greedy), and the simulator's reward / termination head scores every step. Each
dreamed episode (cut at ``horizon`` steps, a truncation) is written atomically to a trajectory store the moment it
ends, marked ``synthetic`` with its simulator, policy and start window in the metadata, so no tool mistakes it for
real data. Memory stays bounded: only the episodes in flight (``num_envs x (horizon + 1)`` frames) are held.

A killed run loses only its episodes in flight; running it again into the same store continues from what is there
with seeds no earlier run used, and stops at exactly ``transitions`` steps (the last episode is cut to fit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from dws_gym.collect import fresh_seed, load_behaviour_policy
from dws_gym.data import TrajectoryStore
from dws_gym.envs.dream import DreamVectorEnv
from dws_gym.envs.registration import simulator_for_real_env
from dws_gym.imagination import StoreStartSampler
from dws_gym.offline.replay import describe_store
from dws_gym.simulator import Simulator

__all__ = ["SynthesisResult", "synthesize"]


@dataclass
class SynthesisResult:
    """What one synthesis run wrote."""

    transitions: int
    """steps written by this run"""
    total: int
    """steps in the store after the run (the target when the run finished)"""
    episodes: int
    """episodes written by this run"""
    seconds: float
    transitions_per_second: float
    seed: int
    """the seed the run used (the first one no earlier run into the store used)"""
    precision: str
    """what the simulator stepped in, and why"""


class _EpsilonGreedy:
    """Replace each action by a uniformly random one with probability ``epsilon`` (its own seeded stream)."""

    def __init__(self, policy: Any, num_actions: int, epsilon: float, seed: int) -> None:
        self.policy, self.num_actions, self.epsilon = policy, num_actions, epsilon
        # Not default_rng(seed): a scripted policy seeded with the same run seed would draw the same numbers, and
        # its own random actions would coincide with these instead of adding to them.
        self.rng = np.random.default_rng((seed, 0xE95))

    def act(self, obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        with torch.no_grad():
            a = np.asarray(self.policy.act(obs, deterministic=deterministic, generator=generator), dtype=np.int64)
        if self.epsilon > 0:
            swap = self.rng.random(a.shape[0]) < self.epsilon
            a = np.where(swap, self.rng.integers(0, self.num_actions, size=a.shape[0]), a)
        return a


def _check_existing(out: TrajectoryStore, simulator_tag: str, policy_tag: str) -> int:
    """Steps already in ``out``; refuses a store holding real data or another simulator's / policy's dreams."""
    for ep_id in out.episode_ids():
        meta = out.meta(ep_id)
        if not meta.synthetic:
            raise ValueError(f"{out.root} holds real episodes (episode {ep_id}); synthesize into a folder of its own.")
        if meta.source_simulator != simulator_tag or meta.policy != policy_tag:
            raise ValueError(
                f"{out.root} already holds transitions of simulator {meta.source_simulator!r} and policy "
                f"{meta.policy!r}; this run is {simulator_tag!r} / {policy_tag!r}. Use another --out, or the same "
                "--simulator, --policy and --epsilon to continue that synthesis."
            )
    return out.num_steps


def synthesize(
    dataset: str | Path,
    out: str | Path,
    transitions: int,
    *,
    simulator: str | Simulator | None = None,
    policy: str | None = None,
    epsilon: float = 0.0,
    deterministic: bool = False,
    horizon: int = 32,
    num_envs: int = 64,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    compile: bool = False,
    progress: bool = True,
) -> SynthesisResult:
    """Fill the store ``out`` with ``transitions`` dreamed steps (see the module doc).

    Args:
        dataset: real trajectory store whose windows start the dreams (its synthetic episodes, if any, are skipped).
        out: the synthetic store (created if missing; a re-run continues it).
        transitions: the store's target size in steps.
        simulator: folder, Hub repo id or :class:`Simulator`; ``None`` takes the one shipped for the dataset's game.
        policy: behaviour policy: a ``save_policy`` folder, ``scripted:<name>[:eps]``, or ``None`` (uniform random).
        epsilon: probability of replacing the policy's action by a uniformly random one.
        deterministic: take the policy's most likely action (before epsilon).
        horizon: steps of a dream before it is cut (truncated); dreams drift from the real game as they grow.
        num_envs: dreams stepped as one batch.
        device, dtype: where and in what precision the simulator steps (see ``DreamVectorEnv``).
        seed: first seed of the run (moved on past seeds earlier runs into ``out`` used).
        compile: ``torch.compile`` the simulator's network (see ``DreamVectorEnv``): 1.2x the throughput on an AMX
            CPU in bf16 (measured), after a first step that compiles.
        progress: show a progress bar with transitions/s.
    """
    if int(transitions) != transitions or transitions < 1:
        raise ValueError(f"transitions must be a positive integer, got {transitions!r}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    real = TrajectoryStore(dataset)
    info = describe_store(real)
    real_ids = [i for i in real.episode_ids() if not real.meta(i).synthetic]
    if simulator is None:  # tagged by game, not by path, so a moved install can continue the same synthesis
        sim_tag = f"shipped:{info.env_id}"
        simulator = simulator_for_real_env(info.env_id)
    else:
        sim_tag = str(simulator) if not isinstance(simulator, Simulator) else f"Simulator({simulator.config.env_id})"
    sim = simulator if isinstance(simulator, Simulator) else Simulator.from_pretrained(simulator)
    if sim.config.env_id != info.env_id or sim.num_actions != info.num_actions:
        raise ValueError(f"The simulator imitates {sim.config.env_id} with {sim.num_actions} actions, but {dataset} "
                         f"holds {info.env_id} with {info.num_actions}: use a simulator of the dataset's game.")

    store = TrajectoryStore(out, create=True)
    run_seed = fresh_seed(out, seed, num_envs)
    behaviour, frame_stack, policy_tag = load_behaviour_policy(policy, sim.num_actions, run_seed, info.env_id)
    if epsilon > 0:
        policy_tag = f"{policy_tag}+epsilon:{epsilon:g}"
    if deterministic:
        policy_tag = f"{policy_tag}+deterministic"
    existing = _check_existing(store, sim_tag, policy_tag)
    start = time.perf_counter()
    if existing >= transitions:
        return SynthesisResult(0, existing, 0, 0.0, 0.0, run_seed, "(nothing to do)")

    sampler = StoreStartSampler(real, sim.context_frames, episode_ids=real_ids)
    envs = DreamVectorEnv(sim, num_envs, device=device, dtype=dtype, start_states=sampler,
                          autoreset_mode=AutoresetMode.NEXT_STEP, max_episode_steps=horizon, frame_stack=frame_stack,
                          compile=compile)
    actor = _EpsilonGreedy(behaviour, sim.num_actions, epsilon, run_seed)
    generator = torch.Generator().manual_seed(run_seed)
    meanings = list(sim.config.action_meanings)

    def latest(o: np.ndarray) -> np.ndarray:
        return o[:, -1] if frame_stack > 1 else o

    obs, reset_info = envs.reset(seed=run_seed)
    starts = reset_info["start_id"].copy()
    bufs: list[dict[str, list]] = [{"obs": [f.copy()], "steps": []} for f in latest(obs)]
    awaiting_reset = np.zeros(num_envs, dtype=bool)
    remaining = transitions - existing
    written = episodes = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=transitions, initial=existing, desc=f"synthesize {info.env_id}", unit="transition",
                   smoothing=0.05, mininterval=1.0)

    def write(i: int) -> None:
        nonlocal written, episodes
        steps = bufs[i]["steps"][:remaining - written]  # the last episode is cut to hit the target exactly
        cut = len(steps) < len(bufs[i]["steps"])
        a, r, term, trunc = (np.asarray(x) for x in zip(*steps))
        if cut:
            term, trunc = term.copy(), trunc.copy()
            term[-1], trunc[-1] = False, True
        ep, first = sampler.locate([starts[i]])
        store.add_episode(
            np.stack(bufs[i]["obs"][: len(steps) + 1]), a.astype(np.int64), r.astype(np.float32), term.astype(bool),
            trunc.astype(bool), term.astype(bool), env_id=info.env_id, action_meanings=meanings,
            action_space={"type": "discrete", "n": sim.num_actions}, policy=policy_tag, synthetic=True,
            source_simulator=sim_tag,
            extra={"seed": run_seed, "num_envs": num_envs, "env_index": i, "horizon": horizon,
                   "dataset": str(dataset), "start_episode": int(ep[0]), "start_frame": int(first[0]),
                   "precision": envs.metadata.get("precision", ""), **({"cut_to_target": True} if cut else {})},
        )
        written += len(steps)
        episodes += 1
        if bar is not None:
            bar.update(len(steps))

    try:
        while written < remaining:
            actions = actor.act(obs, deterministic, generator)
            obs, rewards, terms, truncs, step_info = envs.step(actions)
            frames = latest(obs)
            for i in range(num_envs):
                if awaiting_reset[i]:  # NEXT_STEP: this step ignored the action and began a new dream
                    bufs[i] = {"obs": [frames[i].copy()], "steps": []}
                    starts[i] = step_info["start_id"][i]
                    awaiting_reset[i] = False
                    continue
                bufs[i]["steps"].append((int(actions[i]), float(rewards[i]), bool(terms[i]), bool(truncs[i])))
                bufs[i]["obs"].append(frames[i].copy())
                if (terms[i] or truncs[i]) and written < remaining:
                    write(i)
                    awaiting_reset[i] = True
                elif terms[i] or truncs[i]:
                    awaiting_reset[i] = True
    finally:
        if bar is not None:
            bar.close()
        envs.close()
    seconds = time.perf_counter() - start
    compiled = f", {envs.metadata['compiled']}" if envs.metadata.get("compiled") else ""
    return SynthesisResult(written, existing + written, episodes, seconds, written / max(seconds, 1e-9), run_seed,
                           str(envs.metadata.get("precision", "")) + compiled)
