"""Scripted behaviour policies: game-specific heuristics that keep the interesting events on screen.

A world model learns what its data shows. Uniform random play in Breakout loses the ball within seconds (a reward in
about 0.65% of steps), so a simulator trained on it sees few rallies and few broken bricks. A scripted policy that
follows the ball with the paddle, mixed with random actions so every action is still seen in every situation, gives
long rallies and many brick hits. In the Procgen platformers (CoinRun, Ninja) the goal lies to the right: a policy
that runs right and jumps often reaches it in two thirds of CoinRun's easy-mode episodes, twice random play's rate,
which makes a behaviour policy for offline datasets where training PPO to the published 25M steps is out of reach.

Policies here have :class:`dws_gym.agents.RandomPolicy`'s interface (``act(obs, deterministic, generator)`` on a batch
of uint8 ``(N, 64, 64, 3)`` frames, optionally frame-stacked) and a ``tag`` recorded in the trajectory store. The
collector takes them by name: ``python -m dws_gym.collect --policy scripted:breakout-tracker``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "SCRIPTED_POLICIES",
    "BreakoutTracker",
    "ProcgenRunner",
    "breakout_ball_and_paddle",
    "make_scripted_policy",
]

# Layout of a 64x64 Breakout frame (dws_gym.envs.real's resize of the 210x160 screen): the playfield lies between
# the grey side walls (columns 2..61), the bricks in rows 17..28, the paddle in rows 57..59.
_FIELD_COLS = slice(3, 61)
_BALL_ROWS = (29, 57)  # below the bricks, above the paddle: a red pixel there is the ball
_PADDLE_ROWS = (57, 60)


def _reddish(frames: np.ndarray) -> np.ndarray:
    """Pixels of the ball / paddle red ((200, 72, 72) on the full screen, blended by the resize)."""
    f = frames.astype(np.int16)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return (r > 60) & (r - g > 30) & (r - b > 30)


def breakout_ball_and_paddle(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ball and paddle columns of a batch of Breakout frames.

    Args:
        frames: uint8 ``(N, 64, 64, 3)`` frames.

    Returns:
        ``(ball_x, paddle_x)``, float arrays ``(N,)``: the mean column of the red pixels below the bricks (NaN when
        the ball is not in play there) and of the paddle (NaN when it cannot be seen).
    """
    red = _reddish(frames[:, :, _FIELD_COLS])
    cols = np.arange(_FIELD_COLS.start, _FIELD_COLS.stop, dtype=np.float64)

    def mean_col(mask: np.ndarray) -> np.ndarray:
        per_col = mask.sum(axis=1)  # (N, W)
        total = per_col.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (per_col * cols).sum(axis=1) / np.maximum(total, 1), np.nan)

    ball = mean_col(red[:, _BALL_ROWS[0]: _BALL_ROWS[1]])
    paddle = mean_col(red[:, _PADDLE_ROWS[0]: _PADDLE_ROWS[1]])
    return ball, paddle


class BreakoutTracker:
    """Breakout: move the paddle under the ball, FIRE when no ball is in play, random actions with probability ``eps``.

    Actions are indices into Breakout's minimal action set ``NOOP, FIRE, RIGHT, LEFT``.

    Args:
        eps: Probability of a uniform random action instead of the scripted one (so all actions appear in every
            situation, which an action-conditioned model needs).
        dead_zone: The paddle does not move while it is within this many pixels of the ball's column.
        seed: Seeds the policy's own generator.
    """

    tag = "scripted:breakout-tracker"
    num_actions = 4
    NOOP, FIRE, RIGHT, LEFT = 0, 1, 2, 3

    def __init__(self, eps: float = 0.25, dead_zone: float = 1.5, seed: int | None = None) -> None:
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must lie in [0, 1], got {eps}.")
        self.eps = float(eps)
        self.dead_zone = float(dead_zone)
        self.rng = np.random.default_rng(seed)
        self.tag = f"scripted:breakout-tracker(eps={self.eps:g})"

    def act(self, obs: Any, deterministic: bool = False, generator: torch.Generator | None = None) -> np.ndarray:
        """One action per frame of ``obs`` uint8 ``(N, 64, 64, 3)`` (or ``(N, k, 64, 64, 3)``, newest last).

        ``deterministic`` drops the random actions; ``generator`` is accepted for interface compatibility (the
        policy draws from its own seeded numpy generator).
        """
        frames = obs.cpu().numpy() if torch.is_tensor(obs) else np.asarray(obs)
        if frames.ndim == 5:
            frames = frames[:, -1]
        if frames.ndim != 4 or frames.shape[1:] != (64, 64, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"BreakoutTracker needs uint8 frames (N, 64, 64, 3), got {frames.dtype} {tuple(frames.shape)}."
            )
        n = frames.shape[0]
        ball, paddle = breakout_ball_and_paddle(frames)
        actions = np.full(n, self.NOOP, dtype=np.int64)
        no_ball = np.isnan(ball)
        actions[no_ball] = self.FIRE
        gap = np.where(no_ball | np.isnan(paddle), 0.0, ball - paddle)
        actions[gap > self.dead_zone] = self.RIGHT
        actions[gap < -self.dead_zone] = self.LEFT
        if not deterministic and self.eps > 0:
            explore = self.rng.random(n) < self.eps
            actions[explore] = self.rng.integers(0, self.num_actions, int(explore.sum()))
        return actions


class ProcgenRunner:
    """Procgen platformers (CoinRun, Ninja): run right, jump with probability ``jump``, random actions with ``eps``.

    Stateless: every step draws anew, so it needs no episode boundaries. Actions index Procgen's 15-action set
    (``RIGHT`` = 7, ``RIGHT+UP`` = 8). With the defaults it returns 6.88 in CoinRun and 4.02 in Ninja on easy
    levels 0-199 (random play: 3.32 and 2.38; 256 episodes each, ``dws_gym.policy_eval.evaluate_on_levels``,
    ``bench/RESULTS.md``). The price of its data: the actions other than its two are 1.7% of steps each, so a
    simulator trained on it sees the left-moving actions about 4× less often than in random play.

    Args:
        eps: Probability of a uniform random action instead of the scripted one.
        jump: Probability that a scripted action is ``RIGHT+UP`` rather than ``RIGHT``.
        seed: Seeds the policy's own generator.
    """

    tag = "scripted:procgen-runner"
    num_actions = 15
    RIGHT, RIGHT_UP = 7, 8

    def __init__(self, eps: float = 0.25, jump: float = 0.6, seed: int | None = None) -> None:
        for name, value in (("eps", eps), ("jump", jump)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}.")
        self.eps, self.jump = float(eps), float(jump)
        self.rng = np.random.default_rng(seed)
        self.tag = f"scripted:procgen-runner(eps={self.eps:g},jump={self.jump:g})"

    def act(self, obs: Any, deterministic: bool = False, generator: torch.Generator | None = None) -> np.ndarray:
        """One action per frame of ``obs`` uint8 ``(N, H, W, 3)`` (or ``(N, k, H, W, 3)``); only ``N`` is read.

        ``deterministic`` drops the random actions (the jumps stay random: running right without ever jumping stalls
        at the first wall); ``generator`` is accepted for interface compatibility.
        """
        shape = tuple(obs.shape) if hasattr(obs, "shape") else np.shape(obs)
        if len(shape) not in (4, 5) or shape[-1] != 3:
            raise ValueError(f"ProcgenRunner needs a batch of frames (N, H, W, 3) or (N, k, H, W, 3), got {shape}.")
        n = int(shape[0])
        actions = np.where(self.rng.random(n) < self.jump, self.RIGHT_UP, self.RIGHT).astype(np.int64)
        if not deterministic and self.eps > 0:
            explore = self.rng.random(n) < self.eps
            actions[explore] = self.rng.integers(0, self.num_actions, int(explore.sum()))
        return actions


#: Scripted policies by the name the collector takes after ``scripted:``, with the env ids they play.
SCRIPTED_POLICIES: dict[str, tuple[type, tuple[str, ...]]] = {
    "breakout-tracker": (BreakoutTracker, ("ALE/Breakout-v5",)),
    "procgen-runner": (ProcgenRunner, ("procgen/coinrun", "procgen/ninja")),
}


def make_scripted_policy(spec: str, env_id: str, seed: int | None = None) -> BreakoutTracker | ProcgenRunner:
    """Build a scripted policy from ``"scripted:<name>[:eps]"`` (e.g. ``scripted:breakout-tracker:0.3``).

    Only the random-action probability ``eps`` can be set by name; other settings (``ProcgenRunner``'s ``jump``)
    keep their defaults, and the policy's ``tag`` records them all.
    """
    parts = spec.split(":")
    if parts[0] != "scripted" or len(parts) not in (2, 3):
        raise ValueError(f"a scripted policy is named 'scripted:<name>[:eps]', got {spec!r}.")
    name = parts[1]
    if name not in SCRIPTED_POLICIES:
        raise ValueError(f"unknown scripted policy {name!r}; known: {sorted(SCRIPTED_POLICIES)}.")
    cls, env_ids = SCRIPTED_POLICIES[name]
    from dws_gym.envs.real import parse_env_id

    # Compared as (family, game), so every spelling make_real_env accepts (procgen:coinrun, ...) is recognised.
    if parse_env_id(env_id) not in {parse_env_id(e) for e in env_ids}:
        raise ValueError(f"scripted policy {name!r} plays {', '.join(env_ids)}, not {env_id}.")
    kwargs: dict[str, Any] = {"seed": seed}
    if len(parts) == 3:
        try:
            kwargs["eps"] = float(parts[2])
        except ValueError:
            raise ValueError(f"the eps of {spec!r} must be a number in [0, 1].") from None
    return cls(**kwargs)
