"""Frame stacking for vector envs, shared by the real and the dream environments (``frame_stack=k``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Box
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper


class FrameStackVector(VectorWrapper):
    """Stack the last ``k`` frames of every env: observations (N, H, W, C) become (N, k, H, W, C), oldest first.

    A new episode starts with its first frame repeated ``k`` times. Which envs start a new episode follows the wrapped
    env's ``metadata["autoreset_mode"]``: under NEXT_STEP the step after an episode end, under SAME_STEP the ending
    step itself (its returned frame is the next episode's first).
    """

    def __init__(self, env: VectorEnv, k: int) -> None:
        super().__init__(env)
        if k < 1:
            raise ValueError(f"frame_stack must be >= 1, got {k}.")
        space = env.single_observation_space
        if not isinstance(space, Box) or len(space.shape) != 3:
            raise ValueError(f"FrameStackVector needs (H, W, C) Box observations, got {space}.")
        self.k = k
        self.metadata = dict(env.metadata)
        self.single_observation_space = Box(0, 255, (k, *space.shape), space.dtype)
        self.observation_space = Box(0, 255, (env.num_envs, k, *space.shape), space.dtype)
        self._stack = np.zeros(self.observation_space.shape, dtype=space.dtype)
        self._needs_reset = np.zeros(env.num_envs, dtype=bool)
        self._mode = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))

    def __getattr__(self, name: str) -> Any:
        # Real/dream-specific attributes (action_meanings, game, env_id, ...) stay reachable through the wrapper.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        mask = None if options is None else options.get("reset_mask")
        if mask is None:
            self._stack[:] = obs[:, None]
            self._needs_reset[:] = False
        else:
            mask = np.asarray(mask, dtype=bool)
            self._stack[mask] = obs[mask][:, None]
            self._needs_reset[mask] = False
        return self._stack.copy(), info

    def step(self, actions: Any):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        done = terminated | truncated
        if self._mode is AutoresetMode.NEXT_STEP:
            fresh = self._needs_reset
            self._needs_reset = done.copy()
        elif self._mode is AutoresetMode.SAME_STEP:
            fresh = done
        else:
            fresh = np.zeros_like(done)
        self._stack[:, :-1] = self._stack[:, 1:]
        self._stack[:, -1] = obs
        if fresh.any():
            self._stack[fresh] = obs[fresh][:, None]
        return self._stack.copy(), reward, terminated, truncated, info
