"""Pieces of on-policy training shared by ``ppo_dws.py`` and its tests: masking, GAE, start windows, frame stacks.

Gymnasium 1.x vector envs autoreset in one of two ways, and the loss must follow each:

* ``NEXT_STEP`` (ALE, the dream env): the step that ends an episode returns that episode's *final* observation; the
  following step ignores its action, returns reward 0 and the next episode's first observation. That following step
  is not a transition of the MDP: :func:`valid_steps` masks it out of the loss and of GAE. Because the final
  observation is known, a truncated episode bootstraps from it exactly.
* ``SAME_STEP`` (Procgen through gym3): the ending step already returns the next episode's first frame and the final
  frame is lost, so every step is valid and every end is treated as terminal (nothing to bootstrap from).

An imagined rollout cut after ``H`` steps is truncated, not terminated: :func:`gae` bootstraps it from ``V(s_H)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "ReturnScaler",
    "StartWindowRecorder",
    "WindowFrameStack",
    "gae",
    "minibatch_plan",
    "ppo_losses",
    "real_start_priorities",
    "start_priorities",
    "stack_from_windows",
    "valid_steps",
]


def valid_steps(dones: torch.Tensor, prev_done: torch.Tensor, next_step: bool = True) -> torch.Tensor:
    """Which steps of a rollout are real transitions.

    Args:
        dones: bool ``(T, N)``: step ``t`` ended an episode (terminated or truncated).
        prev_done: bool ``(N,)``: the step before this rollout ended an episode (carried over between rollouts).
        next_step: the env autoresets ``NEXT_STEP``; for ``SAME_STEP`` every step is valid.

    Returns:
        bool ``(T, N)``: False exactly on ``NEXT_STEP`` reset steps (the step after an end).
    """
    if not next_step:
        return torch.ones_like(dones, dtype=torch.bool)
    return ~torch.cat([prev_done[None].bool(), dones[:-1].bool()], dim=0)


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    valid: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    same_step: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a ``(T, N)`` rollout with autoreset masking.

    Step ``t`` acted on ``obs[t]`` (value ``values[t]``) and led to the observation the env returned, which is
    ``obs[t + 1]`` (``last_value`` is the value of the observation after the last step). Then

        ``delta_t = r_t + gamma * (1 - term_t) * V(obs[t + 1]) - V(obs[t])``
        ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``,  ``done_t = term_t | trunc_t``,

    and ``A_t = delta_t = 0`` where ``valid`` is False. Under ``NEXT_STEP`` the observation after an ending step is
    the episode's final one, so a truncation (including the cut at the end of the rollout) bootstraps from it; with
    ``same_step=True`` it is the next episode's first frame and every end is treated as terminal.

    Pass life losses in ``terminated`` to cut the value target there (episodic-life training).

    Returns:
        ``(advantages, returns, deltas)``, each float ``(T, N)``; ``returns = advantages + values``.
    """
    t_len = rewards.shape[0]
    done = terminated.bool() | truncated.bool()
    ends = done if same_step else terminated.bool()
    next_values = torch.cat([values[1:], last_value.reshape(1, -1).to(values.dtype)], dim=0)
    mask = valid.to(values.dtype)
    deltas = (rewards + gamma * next_values * (1.0 - ends.to(values.dtype)) - values) * mask
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(t_len)):
        last = (deltas[t] + gamma * lam * (1.0 - done[t].to(values.dtype)) * last) * mask[t]
        advantages[t] = last
    return advantages, advantages + values, deltas


def _numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A tensor (any device) or array-like as a host numpy array (``dtype`` applies to array-likes only)."""
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=dtype)


def start_priorities(deltas: Any, valid: Any, start_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """TD priority of every start window of an imagined rollout: the mean ``|delta_t|`` over its valid steps.

    Args:
        deltas: float ``(T, N)`` TD errors (from :func:`gae`).
        valid: bool ``(T, N)``.
        start_ids: int ``(T, N)``: the id of the start window each env was dreaming from at step ``t``
            (``-1``: not from the sampler, skipped).

    Returns:
        ``(ids int64 (m,), values float64 (m,))``, one entry per distinct id (envs that drew the same window are
        averaged together).
    """
    d = np.abs(_numpy(deltas, np.float64))
    v = _numpy(valid)
    s = _numpy(start_ids)
    keep = v.astype(bool) & (s >= 0)
    if not keep.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    ids, inverse = np.unique(s[keep].astype(np.int64), return_inverse=True)
    values = np.bincount(inverse, weights=d[keep].astype(np.float64)) / np.bincount(inverse)
    return ids, values


def real_start_priorities(deltas: Any, valid: Any, emitted: list[tuple[int, np.ndarray, np.ndarray]]
                          ) -> tuple[np.ndarray, np.ndarray]:
    """First TD priorities of the start windows a real rollout yielded: ``|delta|`` of the real step taken from
    each window's last frame under the critic that acted.

    A window recorded after rollout step ``s`` ends at the observation step ``s + 1`` acts on, so its value is
    ``|deltas[s + 1]|`` of its env; a window from the rollout's last step (its step is in the next rollout) or from
    a masked step gets the mean ``|delta|`` of the rollout's valid steps. Without this, new windows would enter the
    buffer at a priority unrelated to their TD error and, far outnumbering the windows dreams have scored, would
    decide most draws (see :class:`~dws_gym.imagination.PrioritizedStartStates`).

    Args:
        deltas: float ``(T, N)`` TD errors of the real rollout (from :func:`gae`).
        valid: bool ``(T, N)``.
        emitted: ``(s, envs, ids)`` per rollout step that yielded windows: the step, the int indices of the envs
            whose windows it yielded and the ids the buffer gave them.

    Returns:
        ``(ids int64 (m,), values float64 (m,))`` for ``PrioritizedStartStates.update_priorities``.
    """
    d = np.abs(_numpy(deltas, np.float64))
    v = _numpy(valid).astype(bool)
    fallback = float(d[v].mean()) if v.any() else 0.0
    ids, values = [], []
    for s, envs, window_ids in emitted:
        envs = np.asarray(envs, dtype=np.int64)
        if s + 1 < d.shape[0]:
            values.append(np.where(v[s + 1, envs], d[s + 1, envs], fallback))
        else:
            values.append(np.full(len(envs), fallback))
        ids.append(np.asarray(window_ids, dtype=np.int64))
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    return np.concatenate(ids), np.concatenate(values).astype(np.float64)


def minibatch_plan(
    n_real: int, n_imagined: int, imagined_ratio: float, num_minibatches: int, rng: np.random.RandomState | Any = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of minibatch indices over a real batch and an imagined batch.

    The real batch is shuffled and split into ``num_minibatches`` parts (as in CleanRL). Each part gets
    ``imagined_ratio`` imagined transitions per real one: ``round(imagined_ratio * n_real)`` imagined indices per
    epoch, a shuffled pass over the imagined batch repeated as often as needed, split the same way.

    Returns:
        ``num_minibatches`` pairs ``(real_indices, imagined_indices)``.
    """
    rng = np.random if rng is None else rng
    real = rng.permutation(n_real)
    n_imag = int(round(imagined_ratio * n_real)) if n_imagined > 0 else 0
    if n_imag > 0:
        reps = -(-n_imag // n_imagined)
        imag = np.concatenate([rng.permutation(n_imagined) for _ in range(reps)])[:n_imag]
    else:
        imag = np.zeros(0, dtype=np.int64)
    return list(zip(np.array_split(real, num_minibatches), np.array_split(imag, num_minibatches)))


def stack_from_windows(frames: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-frame stack an agent would see at the end of each start window.

    Args:
        frames: uint8 ``(n, K, H, W, C)`` windows.
        k: frames per stack.

    Returns:
        uint8 ``(n, k, H, W, C)``: the last ``k`` frames, the oldest repeated in front when ``K < k``.
    """
    n, big_k = frames.shape[:2]
    if big_k >= k:
        return frames[:, big_k - k:].copy()
    pad = np.repeat(frames[:, :1], k - big_k, axis=1)
    return np.concatenate([pad, frames], axis=1)


class WindowFrameStack:
    """Frame stacks of dreams that start mid-episode, from the frames of their real start windows.

    A dream env with ``frame_stack=1`` returns one frame per step. A (re)started dream's stack is the last ``k``
    frames of its start window (what the agent saw in the real game there), not its first frame repeated; later
    steps push the dreamed frame.

    Args:
        k: frames per stack.
        windows: ``ids (m,) -> (frames (m, K, H, W, C), actions)``, e.g. ``PrioritizedStartStates.windows``.
    """

    def __init__(self, k: int, windows: Any) -> None:
        self.k = int(k)
        self.windows = windows
        self.stack: np.ndarray | None = None

    def reset(self, start_ids: np.ndarray) -> np.ndarray:
        """Stacks for every env from its start id (``info["start_id"]`` of ``reset``)."""
        self.stack = stack_from_windows(self.windows(np.asarray(start_ids))[0], self.k)
        return self.stack.copy()

    def step(self, frames: np.ndarray, restarted: np.ndarray | None = None,
             start_ids: np.ndarray | None = None) -> np.ndarray:
        """Push ``frames`` (N, H, W, C); envs in ``restarted`` (bool (N,)) take their new window's stack instead."""
        assert self.stack is not None, "call reset() first"
        self.stack[:, :-1] = self.stack[:, 1:]
        self.stack[:, -1] = frames
        if restarted is not None and restarted.any():
            self.stack[restarted] = stack_from_windows(self.windows(start_ids[restarted])[0], self.k)
        return self.stack.copy()


class StartWindowRecorder:
    """Keeps the last ``K`` frames and ``K - 1`` actions of every real env and emits start windows.

    After every real step, each env whose current episode holds at least ``K`` frames yields the window ending at
    the frame just observed (the simulator's start format: ``K`` frames and the ``K - 1`` actions between them).
    A frame that ends an episode yields nothing (there is no game to continue from it).

    Args:
        num_envs: real envs.
        context_frames: ``K``.
        frame_shape: ``(H, W, C)``.
    """

    def __init__(self, num_envs: int, context_frames: int, frame_shape: tuple[int, ...]) -> None:
        self.k = int(context_frames)
        self.frames = np.zeros((num_envs, self.k, *frame_shape), dtype=np.uint8)
        self.actions = np.zeros((num_envs, max(self.k - 1, 0)), dtype=np.int64)
        self.length = np.zeros(num_envs, dtype=np.int64)
        self.emitted = np.zeros(num_envs, dtype=bool)
        """bool (N,): the envs whose windows the last :meth:`step` returned, in the order it returned them"""

    def reset(self, frames: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Episodes start at ``frames`` (N, H, W, C) for the envs in ``mask`` (all by default)."""
        mask = np.ones(len(self.length), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        self.frames[mask, -1] = frames[mask]
        self.length[mask] = 1

    def step(self, actions: np.ndarray, frames: np.ndarray, new_episode: np.ndarray,
             ended: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record one real step.

        Args:
            actions: int (N,): the actions just taken.
            frames: uint8 (N, H, W, C): the frames the step returned.
            new_episode: bool (N,): the returned frame starts a new episode (a ``NEXT_STEP`` reset step, or a
                ``SAME_STEP`` end); the action is not part of any window.
            ended: bool (N,): the returned frame is the last of its episode (no window from it).

        Returns:
            ``(frames uint8 (m, K, H, W, C), actions int64 (m, K - 1))``: the new windows.
        """
        new_episode = np.asarray(new_episode, dtype=bool)
        cont = ~new_episode
        self.frames[cont, :-1] = self.frames[cont, 1:]
        self.frames[cont, -1] = frames[cont]
        if self.k > 1:
            self.actions[cont, :-1] = self.actions[cont, 1:]
            self.actions[cont, -1] = np.asarray(actions)[cont]
        self.length[cont] += 1
        self.reset(frames, new_episode)
        emit = (self.length >= self.k) & ~np.asarray(ended, dtype=bool)
        self.emitted = emit
        return self.frames[emit].copy(), self.actions[emit].copy()


class ReturnScaler:
    """Reward scaling by a running standard deviation of the discounted return (CleanRL's ``NormalizeReward``).

    ``scale(rewards, dones)`` updates the statistics with one vector step and returns ``rewards / std``;
    ``apply(rewards)`` scales without updating (for dreamed rewards).
    """

    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8) -> None:
        self.gamma, self.eps = float(gamma), float(eps)
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def scale(self, rewards: np.ndarray, dones: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        valid = np.ones(len(rewards), bool) if valid is None else np.asarray(valid, dtype=bool)
        self.returns = np.where(valid, self.returns * self.gamma + rewards, self.returns)
        x = self.returns[valid]
        if x.size:
            b_mean, b_var, b_count = float(x.mean()), float(x.var()), x.size
            delta, total = b_mean - self.mean, self.count + b_count
            self.mean += delta * b_count / total
            self.var = (self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total) / total
            self.count = total
        self.returns[np.asarray(dones, dtype=bool)] = 0.0
        return self.apply(rewards)

    def apply(self, rewards: np.ndarray) -> np.ndarray:
        return (np.asarray(rewards, dtype=np.float64) / np.sqrt(self.var + self.eps)).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns.copy(), "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = np.asarray(state["returns"], dtype=np.float64).copy()
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


def ppo_losses(
    newlogprob: torch.Tensor,
    entropy: torch.Tensor,
    newvalue: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    values: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    clip_coef: float,
    clip_vloss: bool = True,
    norm_adv: bool = True,
) -> dict[str, torch.Tensor]:
    """CleanRL's PPO losses over a minibatch, with invalid steps masked out and optional per-sample weights.

    Every mean is over the valid samples only (``valid`` float or bool ``(B,)``), so a ``NEXT_STEP`` reset step
    contributes nothing, whatever its advantage, return or ratio. ``weights`` (e.g. importance weights of the start
    windows of imagined samples, 1 for real ones) scale the policy and value terms; the entropy bonus and the
    advantage normalisation (mean and std over valid samples) are unweighted.

    Returns:
        ``pg_loss``, ``v_loss``, ``entropy_loss`` (with gradients) and ``old_approx_kl``, ``approx_kl``,
        ``clipfrac`` (detached).
    """
    mask = valid.to(newlogprob.dtype)
    keep = mask > 0
    n = mask.sum().clamp(min=1.0)
    w = mask if weights is None else mask * weights.to(newlogprob.dtype)
    # neutral stand-ins for masked samples, so nothing they hold (even inf / nan) reaches a sum or a gradient
    newvalue = newvalue.view(-1)
    logprobs = torch.where(keep, logprobs, newlogprob.detach())
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    values = torch.where(keep, values, newvalue.detach())
    returns = torch.where(keep, returns, newvalue.detach())
    logratio = newlogprob - logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        # http://joschu.net/blog/kl-approx.html
        old_approx_kl = (-logratio * mask).sum() / n
        approx_kl = (((ratio - 1) - logratio) * mask).sum() / n
        clipfrac = (((ratio - 1.0).abs() > clip_coef).to(mask.dtype) * mask).sum() / n
    if norm_adv:
        mean = (advantages * mask).sum() / n
        std = (((advantages - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1.0)).sqrt()
        advantages = (advantages - mean) / (std + 1e-8)
    pg = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef))
    pg_loss = (pg * w).sum() / n
    v_unclipped = (newvalue - returns) ** 2
    if clip_vloss:
        v_clipped = values + torch.clamp(newvalue - values, -clip_coef, clip_coef)
        v = torch.max(v_unclipped, (v_clipped - returns) ** 2)
    else:
        v = v_unclipped
    v_loss = 0.5 * (v * w).sum() / n
    entropy_loss = (entropy * mask).sum() / n
    return {"pg_loss": pg_loss, "v_loss": v_loss, "entropy_loss": entropy_loss, "old_approx_kl": old_approx_kl,
            "approx_kl": approx_kl, "clipfrac": clipfrac}
