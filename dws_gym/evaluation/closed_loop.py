"""Closed-loop returns: the same action sequences in the real env and in the dream, from the same real start.

:func:`closed_loop_returns` resets a real vector env, steps it and the simulator side by side
(:func:`lockstep_rollout`) and compares the returns up to each side's first episode end (mean ± std, per-episode
Pearson correlation; :class:`ClosedLoopResult`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dws_gym.evaluation.acceptance import check_event_acceptance
from dws_gym.evaluation.open_loop import ArrayLike, _as_numpy, _check_positive_int, _json_value
from dws_gym.metrics import HeldOutTable

if TYPE_CHECKING:
    from dws_gym.simulator import Simulator

__all__ = [
    "ClosedLoopResult",
    "check_action_meanings",
    "closed_loop_returns",
    "first_end_step",
    "lockstep_rollout",
    "pearson",
    "returns_until_end",
]


def first_end_step(done: ArrayLike) -> np.ndarray:
    """int64 ``(E,)`` 1-based step of each row's first True in bool ``(E, T)`` ``done``; -1 where there is none."""
    d = _as_numpy(done, "done").astype(bool)
    return np.where(d.any(axis=1), d.argmax(axis=1) + 1, -1).astype(np.int64)


def returns_until_end(rewards: ArrayLike, done: ArrayLike) -> np.ndarray:
    """float64 ``(E,)`` sum of each row's rewards up to and including its first ``done`` step (all if none).

    Summed step by step in order (``cumsum``), as a running return would be.
    """
    r = _as_numpy(rewards, "rewards").astype(np.float64)
    d = _as_numpy(done, "done").astype(bool)
    if r.shape != d.shape or r.ndim != 2:
        raise ValueError(f"rewards and done must both be (E, T), got {r.shape} and {d.shape}")
    after_end = (np.cumsum(d, axis=1) - d) > 0
    if r.shape[1] == 0:
        return np.zeros(r.shape[0])
    return np.cumsum(np.where(after_end, 0.0, r), axis=1)[:, -1]


def pearson(a: ArrayLike | Sequence[float], b: ArrayLike | Sequence[float]) -> tuple[float, str | None]:
    """Pearson correlation of two 1-D samples, NaN-safe: ``(r, None)`` or ``(nan, why)``.

    The correlation is undefined (NaN, with the reason) for fewer than two pairs or when either side has zero
    variance (e.g. every real episode returned the same score).
    """
    x, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in (a, b))
    x, y = x.astype(np.float64).reshape(-1), y.astype(np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return math.nan, f"undefined for {x.size} episode(s) (needs at least 2)"
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan, "undefined: non-finite returns"
    zero = [name for name, v in (("real", x), ("dream", y)) if float(np.ptp(v)) == 0.0]
    if zero:
        return math.nan, f"undefined: {' and '.join(zero)} returns have zero variance"
    return float(np.corrcoef(x, y)[0, 1]), None


def lockstep_rollout(
    sim: Simulator,
    real_env: Any,
    state: Any,
    obs: np.ndarray,
    choose_action: Callable[[int, np.ndarray], Any],
    steps: int,
    *,
    generator: torch.Generator | None,
    sampling_steps: int | None = None,
    on_step: Callable[[int, np.ndarray, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Step a real vector env and a simulator batch side by side with the same action per episode and step.

    Args:
        sim: The simulator; ``state`` is its batch (:meth:`Simulator.init_state`), one simulation per real env.
        real_env: A started real vector env (``E`` envs) whose latest observation is ``obs``.
        state: The simulator state to continue.
        obs: The real env's latest observation (passed to ``choose_action`` at the first step).
        choose_action: ``(t, real observation) -> (E,)`` integer actions for step ``t`` (0-based), applied to both.
        steps: ``T``, steps taken.
        generator: The simulator's sampling noise.
        sampling_steps: Euler steps per dream step (``None``: the simulator's default).
        on_step: Called after every step with ``(t, real observation, dreamed frame (E, H, W, 3) tensor)``.

    Returns:
        ``actions`` int64 ``(E, T)``; ``real_rewards`` float64 / ``real_terminated`` / ``real_truncated`` bool
        ``(E, T)``; ``dream_rewards`` float64 / ``dream_terminated`` bool ``(E, T)``; the final ``obs`` and
        ``state``. Episode ends stop nothing here: the real env autoresets as it was made to, the dream keeps
        dreaming; callers cut the returns (:func:`returns_until_end`) or not.
    """
    e = state.num_envs
    out = {
        "actions": np.zeros((e, steps), dtype=np.int64),
        "real_rewards": np.zeros((e, steps), dtype=np.float64),
        "real_terminated": np.zeros((e, steps), dtype=bool),
        "real_truncated": np.zeros((e, steps), dtype=bool),
        "dream_rewards": np.zeros((e, steps), dtype=np.float64),
        "dream_terminated": np.zeros((e, steps), dtype=bool),
    }
    for t in range(steps):
        action = np.asarray(choose_action(t, obs), dtype=np.int64)
        out["actions"][:, t] = action
        obs, reward, terminated, truncated, _ = real_env.step(action)
        frame, dream_reward, dream_terminated, state = sim.step(
            state, torch.from_numpy(action), generator=generator, steps=sampling_steps
        )
        out["real_rewards"][:, t] = np.asarray(reward, dtype=np.float64)
        out["real_terminated"][:, t] = np.asarray(terminated, dtype=bool)
        out["real_truncated"][:, t] = np.asarray(truncated, dtype=bool)
        out["dream_rewards"][:, t] = dream_reward.double().cpu().numpy()
        out["dream_terminated"][:, t] = dream_terminated.cpu().numpy()
        if on_step is not None:
            on_step(t, obs, frame)
    out["obs"], out["state"] = obs, state
    return out


@dataclass
class ClosedLoopResult:
    """Returns of the same action sequences in the real env and in the dream from the same real start
    (:func:`closed_loop_returns`).

    Attributes:
        env_id: The real env.
        steps: ``T``, steps after the context.
        seed: Seed of the real env, the action sequence and the dream's noise.
        context_frames: ``K``.
        real_returns, dream_returns: float64 ``(E,)``: rewards summed over the ``T`` steps up to and including the
            episode's first end (real: terminated or truncated; dream: predicted termination).
        real_end_steps, dream_end_steps: int64 ``(E,)`` 1-based step of that end, -1 if the episode ran on.
        actions: int64 ``(E, K - 1 + T)``: the context actions, then the ``T`` compared ones.
        correlation: Per-episode Pearson correlation of the returns (NaN when undefined).
        correlation_note: Why the correlation is NaN, else ``None``.
        sampling_steps: Euler steps per dream step used (``None``: the simulator's default).
        reference_returns: float64 ``(E,)`` or ``None``: the same action sequences played by a second real env
            reset with ``seed + 1``, cut the same way. That reset is another start (other no-op starts, another
            level), so the pair differs in its start, not only in the game's randomness.
        reference_correlation: Per-episode correlation of ``real_returns`` and ``reference_returns``: how much the
            actions alone decide a return when the start differs; a baseline a simulator that follows its own start
            should beat, not a ceiling (NaN when undefined or not measured).
        real_rewards, dream_rewards: float64 ``(E, T)``: every step's reward on each side, uncut (for diagnosis;
            not serialised by :meth:`to_dict`).
    """

    env_id: str
    steps: int
    seed: int
    context_frames: int
    real_returns: np.ndarray
    dream_returns: np.ndarray
    real_end_steps: np.ndarray
    dream_end_steps: np.ndarray
    actions: np.ndarray
    correlation: float
    correlation_note: str | None = None
    sampling_steps: int | None = None
    reference_returns: np.ndarray | None = None
    reference_correlation: float = float("nan")
    real_rewards: np.ndarray | None = None
    dream_rewards: np.ndarray | None = None

    @property
    def episodes(self) -> int:
        return int(self.real_returns.shape[0])

    def summary(self) -> dict[str, float]:
        """Mean and (population) standard deviation of each side's returns."""
        real, dream = self.real_returns, self.dream_returns
        out = {"real_mean": float(real.mean()), "real_std": float(real.std()),
               "dream_mean": float(dream.mean()), "dream_std": float(dream.std())}  # fmt: skip
        if self.reference_returns is not None:
            out["reference_mean"] = float(self.reference_returns.mean())
            out["reference_std"] = float(self.reference_returns.std())
        return out

    def acceptance(self, **kwargs: Any) -> dict[str, bool]:
        """:func:`check_event_acceptance` of these returns (keyword arguments are passed on)."""
        return check_event_acceptance(closed_loop=self, **kwargs)

    def to_markdown(self) -> str:
        s = self.summary()
        corr = "nan" if math.isnan(self.correlation) else f"{self.correlation:.3f}"
        note = f" ({self.correlation_note})" if self.correlation_note else ""
        rows = [
            {"side": "real", "mean return": s["real_mean"], "std": s["real_std"],
             "episodes ended": int((self.real_end_steps > 0).sum())},
            {"side": "dream", "mean return": s["dream_mean"], "std": s["dream_std"],
             "episodes ended": int((self.dream_end_steps > 0).sum())},
        ]  # fmt: skip
        table = HeldOutTable(
            columns=["side", "mean return", "std", "episodes ended"], rows=rows,
            title=f"Closed-loop returns: {self.episodes} episodes x {self.steps} steps, same actions, real vs dream",
        )  # fmt: skip
        return "\n".join([
            f"Each episode starts from a seeded reset of `{self.env_id}` (seed {self.seed}) and "
            f"{self.context_frames - 1} real steps, whose {self.context_frames} frames start the dream; then the same "
            "uniformly random action sequence (all actions, FIRE included where the game has it) runs "
            f"{self.steps} steps in both. Returns sum the rewards up to and including each side's first episode end.",
            "",
            table.to_markdown(),
            "",
            f"Per-episode Pearson correlation of real and dream returns: {corr}{note}",
        ] + ([] if self.reference_returns is None else [
            "",
            f"Baseline: the same actions in a second real env (reset seed {self.seed + 1}, so another start) return "
            f"{s['reference_mean']:.3g} ± {s['reference_std']:.3g}; its per-episode correlation with the first real "
            f"run is {self.reference_correlation:.3f}: how much the start alone decides a return, which a simulator "
            "that follows its own start should beat.",
        ]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary with the per-episode returns (NaN becomes ``None``)."""
        return {
            "env_id": self.env_id,
            "episodes": self.episodes,
            "steps": self.steps,
            "seed": self.seed,
            "context_frames": self.context_frames,
            "sampling_steps": self.sampling_steps,
            **{k: _json_value(v) for k, v in self.summary().items()},
            "correlation": _json_value(self.correlation),
            "correlation_note": self.correlation_note,
            "reference_correlation": _json_value(self.reference_correlation),
            "reference_returns": None if self.reference_returns is None else
            [_json_value(v) for v in self.reference_returns],
            "real_returns": [_json_value(v) for v in self.real_returns],
            "dream_returns": [_json_value(v) for v in self.dream_returns],
            "markdown": self.to_markdown(),
        }


def check_action_meanings(env_id: str, meanings: Sequence[str], sim: Simulator) -> None:
    """Raise ``ValueError`` unless the real env ``env_id`` and ``sim`` give the same meaning to every action index."""
    meanings = list(meanings)
    if meanings != list(sim.config.action_meanings):
        raise ValueError(
            f"{env_id} has actions {meanings} but the simulator's are {list(sim.config.action_meanings)}; "
            "the same action index would mean different things in the real game and the dream."
        )


def closed_loop_returns(
    sim: Simulator,
    env_id: str | None = None,
    episodes: int = 100,
    steps: int = 100,
    seed: int = 0,
    *,
    sampling_steps: int | None = None,
    generator: torch.Generator | None = None,
    actions: ArrayLike | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    reference: bool = True,
    on_step: Callable[[int, np.ndarray, torch.Tensor], None] | None = None,
) -> ClosedLoopResult:
    """Run the same action sequences in the real env and in the dream from the same real start; compare returns.

    All ``episodes`` run as one real vector env and one simulator batch: the real env (``make_real_env(env_id,
    num_envs=episodes)``) is reset with ``seed``, then takes ``K - 1`` steps with the first ``K - 1`` actions of
    each sequence; its ``K`` frames and those actions start the dream (:meth:`Simulator.init_state`). Then both take
    the remaining ``steps`` actions together (:func:`lockstep_rollout`). Rewards of the context steps are not
    counted; each side's return stops accumulating after its first episode end (real: terminated or truncated;
    dream: predicted termination), that step's reward included. (A real episode ending within the ``K - 1``
    context steps would go unnoticed; no ALE or Procgen game ends that fast.)

    Args:
        sim: The simulator (64x64 frames, the real env's action set).
        env_id: Real env id (default: the simulator's ``config.env_id``).
        episodes: ``E``.
        steps: ``T``, compared steps after the context.
        seed: Seeds the real env's reset, the action sequence and (without ``generator``) the dream's noise.
        sampling_steps: Euler steps per dream step (``None``: the simulator's default).
        generator: The dream's noise (default: a generator on the simulator's device seeded with ``seed``).
        actions: int ``(E, K - 1 + T)`` action sequences to use instead of the seeded uniform ones (which draw
            every action of the game's action set with equal probability, FIRE included).
        env_kwargs: Passed to :func:`dws_gym.envs.real.make_real_env` (e.g. ``num_threads``).
        reference: Also play the sequences in a second real env reset with ``seed + 1`` (another start) and report
            how well its returns follow the first run's (``reference_correlation``; cheap next to the dream).
        on_step: Passed to :func:`lockstep_rollout`: sees every compared step's real observation and dreamed frame.

    Returns:
        :class:`ClosedLoopResult` (the correlation is NaN, with the reason, when either side's returns do not vary).

    Raises:
        ValueError: the real env's actions or frames differ from the simulator's, or bad sizes.
    """
    from dws_gym.envs.real import make_real_env

    episodes = _check_positive_int("episodes", episodes)
    steps = _check_positive_int("steps", steps)
    env_id = sim.config.env_id if env_id is None else env_id
    k = sim.context_frames
    if actions is None:
        seq = np.random.default_rng(seed).integers(0, sim.num_actions, size=(episodes, k - 1 + steps))
    else:
        seq = _as_numpy(actions, "actions") if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if seq.shape != (episodes, k - 1 + steps):
            raise ValueError(f"actions must be (episodes, K - 1 + steps) = ({episodes}, {k - 1 + steps}), "
                             f"got {seq.shape}")  # fmt: skip
    seq = sim.check_actions(seq, (episodes, k - 1 + steps), "actions").cpu().numpy()
    if generator is None:
        generator = torch.Generator(device=sim.device).manual_seed(int(seed))

    real = make_real_env(env_id, num_envs=episodes, **dict(env_kwargs or {}))
    try:
        check_action_meanings(env_id, real.get_action_meanings(), sim)
        shape = tuple(real.single_observation_space.shape)
        if shape != tuple(sim.config.obs_shape):
            raise ValueError(f"the simulator dreams {tuple(sim.config.obs_shape)} frames but {env_id} emits {shape}")
        obs, _ = real.reset(seed=int(seed))
        context = [np.asarray(obs).copy()]
        for j in range(k - 1):
            obs, *_ = real.step(seq[:, j])
            context.append(np.asarray(obs).copy())
        state = sim.init_state(np.stack(context, axis=1), seq[:, : k - 1])
        run = lockstep_rollout(sim, real, state, obs, lambda t, _obs: seq[:, k - 1 + t], steps, generator=generator,
                               sampling_steps=sampling_steps, on_step=on_step)  # fmt: skip
    finally:
        real.close()
    real_done = run["real_terminated"] | run["real_truncated"]
    real_returns = returns_until_end(run["real_rewards"], real_done)
    dream_returns = returns_until_end(run["dream_rewards"], run["dream_terminated"])
    corr, note = pearson(real_returns, dream_returns)
    ref_returns, ref_corr = None, float("nan")
    if reference:
        ref_returns = _replay_real(env_id, seq, int(seed) + 1, k, env_kwargs)
        ref_corr = pearson(real_returns, ref_returns)[0]
    return ClosedLoopResult(
        env_id=env_id, steps=steps, seed=int(seed), context_frames=k, real_returns=real_returns,
        dream_returns=dream_returns, real_end_steps=first_end_step(real_done),
        dream_end_steps=first_end_step(run["dream_terminated"]), actions=seq.astype(np.int64), correlation=corr,
        correlation_note=note, sampling_steps=sampling_steps, reference_returns=ref_returns,
        reference_correlation=float(ref_corr), real_rewards=run["real_rewards"], dream_rewards=run["dream_rewards"],
    )  # fmt: skip


def _replay_real(env_id: str, seq: np.ndarray, seed: int, k: int, env_kwargs: Mapping[str, Any] | None) -> np.ndarray:
    """Returns of the action sequences ``seq`` (E, K - 1 + T) in a real env reset with ``seed``, counted after the
    ``K - 1`` context steps and cut at the first end, as :func:`closed_loop_returns` counts the real side."""
    from dws_gym.envs.real import make_real_env

    e, total = seq.shape
    real = make_real_env(env_id, num_envs=e, **dict(env_kwargs or {}))
    try:
        real.reset(seed=seed)
        rewards = np.zeros((e, total - (k - 1)))
        done = np.zeros_like(rewards, dtype=bool)
        for j in range(total):
            _, r, term, trunc, _ = real.step(seq[:, j])
            if j >= k - 1:
                rewards[:, j - (k - 1)] = np.asarray(r, dtype=np.float64)
                done[:, j - (k - 1)] = np.asarray(term, dtype=bool) | np.asarray(trunc, dtype=bool)
    finally:
        real.close()
    return returns_until_end(rewards, done)
