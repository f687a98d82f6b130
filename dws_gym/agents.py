"""Policy networks for image observations and their self-contained checkpoints.

See docs/ARCHITECTURE.md, 'Policy checkpoints' and 'Observation format'.

Every env in this package, real or dreamed, emits uint8 RGB frames of shape ``(64, 64, 3)`` per env, or
``(k, 64, 64, 3)`` with ``frame_stack=k``, and takes ``Discrete(n)`` actions. :class:`ActorCritic` consumes exactly
those arrays (numpy or torch, uint8, with a leading batch axis) and does its own preprocessing, so a checkpoint is
all a collector, ``offline/augment.py`` or an evaluation needs:

    policy = ActorCritic(PolicyConfig.from_spaces(envs.single_observation_space, envs.single_action_space,
                                                  arch="impala", env_id="ALE/Breakout-v5"))
    save_policy(policy, "runs/x/policy")
    policy = load_policy("runs/x/policy", env=envs)          # raises ValueError if it does not fit envs
    actions = policy.act(obs, generator=torch.Generator().manual_seed(0))

A checkpoint is a folder holding ``config.json`` (format version, env id, frame stack, the preprocessing in words,
network sizes) and ``model.safetensors`` (weights; never pickle). Saves are atomic: a new folder is written beside
the target and renamed into place, and an existing checkpoint is moved aside only once the new one is complete.

The networks follow CleanRL's PPO agents: a Nature-CNN or IMPALA-CNN trunk, a linear actor (logits of a
Categorical) and a linear critic, orthogonal initialisation (gain sqrt(2) in the trunk, 0.01 on the actor, 1 on the
critic) and zero biases.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Union, runtime_checkable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributions import Categorical

from dws_gym.fileio import write_folder_atomically

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "ActorCritic",
    "ImpalaCNN",
    "NatureCNN",
    "Policy",
    "PolicyConfig",
    "RandomPolicy",
    "check_policy_matches",
    "load_policy",
    "save_policy",
]

FORMAT_VERSION = 1
"""Version of the checkpoint folder layout; :func:`load_policy` refuses versions it does not know."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

Arch = Literal["nature", "impala"]
ObsLike = Union[np.ndarray, torch.Tensor]

_DEFAULT_CHANNELS: dict[str, tuple[int, ...]] = {"nature": (32, 64, 64), "impala": (16, 32, 32)}
_DEFAULT_HIDDEN: dict[str, int] = {"nature": 512, "impala": 256}
# Keys config.json carries besides the PolicyConfig fields.
_META_KEYS = ("format_version", "type", "preprocessing")
_TYPE_TAG = "dws_gym.agents.ActorCritic"


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PolicyConfig:
    """Everything needed to rebuild an :class:`ActorCritic` (weights aside); JSON serializable.

    Attributes:
        arch: trunk, ``"nature"`` (Nature-CNN) or ``"impala"`` (IMPALA-CNN).
        obs_shape: the per-env observation shape the policy takes, exactly as the env's single observation space
            reports it: ``(H, W, C)`` without frame stacking, ``(k, H, W, C)`` with it (channel-last; C = 3 for RGB).
        num_actions: size n of the ``Discrete(n)`` action space.
        frame_stack: number of stacked frames k. Must agree with ``obs_shape``: ``obs_shape[0]`` for 4-d shapes,
            1 for 3-d ones. Left as ``None`` it is derived from ``obs_shape``.
        env_id: id of the env the policy was built for (informational; real and dream ids of one game differ).
        action_meanings: optional names of the actions, e.g. ``["NOOP", "FIRE", "RIGHT", "LEFT"]``; when both the
            policy and an env know them, :func:`check_policy_matches` requires them to agree.
        channels: conv widths. Nature-CNN takes exactly 3 (default ``(32, 64, 64)``); IMPALA-CNN one per stack
            (default ``(16, 32, 32)``). ``None`` picks the default.
        hidden_size: width of the linear layer after the convs (default 512 Nature, 256 IMPALA). ``None`` picks it.
        extra: free-form JSON-serializable metadata (training step, return, run name, ...).
    """

    arch: Arch
    obs_shape: tuple[int, ...]
    num_actions: int
    frame_stack: int | None = None
    env_id: str | None = None
    action_meanings: list[str] | None = None
    channels: tuple[int, ...] | None = None
    hidden_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in _DEFAULT_CHANNELS:
            raise ValueError(f"PolicyConfig.arch must be 'nature' or 'impala', got {self.arch!r}.")
        self.obs_shape = tuple(int(s) for s in self.obs_shape)
        if len(self.obs_shape) not in (3, 4) or any(s < 1 for s in self.obs_shape):
            raise ValueError(
                f"PolicyConfig.obs_shape must be (H, W, C) or (k, H, W, C) with positive sizes, got {self.obs_shape}."
            )
        implied_stack = self.obs_shape[0] if len(self.obs_shape) == 4 else 1
        if self.frame_stack is None:
            self.frame_stack = implied_stack
        if int(self.frame_stack) != implied_stack:
            raise ValueError(
                f"PolicyConfig.frame_stack={self.frame_stack} disagrees with obs_shape={self.obs_shape}: a stack of k "
                f"frames has obs_shape (k, H, W, C); a single frame (H, W, C). Fix one of the two."
            )
        self.frame_stack = int(self.frame_stack)
        if int(self.num_actions) < 1:
            raise ValueError(f"PolicyConfig.num_actions must be >= 1, got {self.num_actions}.")
        self.num_actions = int(self.num_actions)
        if self.action_meanings is not None:
            self.action_meanings = [str(m) for m in self.action_meanings]
            if len(self.action_meanings) != self.num_actions:
                raise ValueError(
                    f"PolicyConfig.action_meanings has {len(self.action_meanings)} names but num_actions is "
                    f"{self.num_actions}; give one name per action or None."
                )
        self.channels = tuple(int(c) for c in (self.channels or _DEFAULT_CHANNELS[self.arch]))
        if self.arch == "nature" and len(self.channels) != 3:
            raise ValueError(f"Nature-CNN takes exactly 3 conv widths, got channels={self.channels}.")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"PolicyConfig.channels must be positive widths, got {self.channels}.")
        self.hidden_size = int(self.hidden_size or _DEFAULT_HIDDEN[self.arch])
        if self.hidden_size < 1:
            raise ValueError(f"PolicyConfig.hidden_size must be >= 1, got {self.hidden_size}.")
        if not isinstance(self.extra, dict):
            raise ValueError(f"PolicyConfig.extra must be a dict, got {type(self.extra).__name__}.")

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, C)`` of one frame."""
        return self.obs_shape[-3:]  # type: ignore[return-value]

    @property
    def in_channels(self) -> int:
        """Channels the trunk sees: k stacked frames of C channels each."""
        return self.frame_stack * self.obs_shape[-1]  # type: ignore[operator]

    def preprocessing(self) -> str:
        """The input pipeline in words (stored in ``config.json`` for people and other tools)."""
        h, w, c = self.frame_shape
        text = (
            f"Input: uint8 array of shape (N, {', '.join(map(str, self.obs_shape))}) (channel-last"
            + (f", {self.frame_stack} stacked frames on axis 1" if len(self.obs_shape) == 4 else "")
            + "), as numpy or torch. Converted to float32 and divided by 255 (no other normalisation, no resize, "
            + "no grayscale). Channels moved first"
        )
        if len(self.obs_shape) == 4:
            text += (
                f"; the {self.frame_stack} frames are concatenated on the channel axis in stack order (frame 0 "
                f"first), giving {self.in_channels} channels of {h}x{w}."
            )
        else:
            text += f", giving {c} channels of {h}x{w}."
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the fields (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["obs_shape"] = list(self.obs_shape)
        d["channels"] = list(self.channels or ())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        """Inverse of :meth:`to_dict`. Raises ValueError on missing or unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown policy config keys {unknown}; put free-form metadata under 'extra'.")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"Policy config lacks required keys {missing}.")
        return cls(**d)

    @classmethod
    def from_spaces(
        cls,
        observation_space: Any,
        action_space: Any,
        *,
        arch: Arch = "nature",
        env_id: str | None = None,
        action_meanings: list[str] | None = None,
        **kwargs: Any,
    ) -> PolicyConfig:
        """Config for one env's spaces (for a vector env pass ``single_observation_space`` / ``single_action_space``).

        Args:
            observation_space: ``Box`` of uint8 frames, shape (H, W, C) or (k, H, W, C).
            action_space: ``Discrete(n)``.
            arch, env_id, action_meanings, **kwargs: remaining :class:`PolicyConfig` fields.
        """
        from gymnasium.spaces import Box, Discrete

        if not isinstance(observation_space, Box):
            raise ValueError(f"Expected a Box observation space of uint8 frames, got {observation_space}.")
        if not isinstance(action_space, Discrete):
            raise ValueError(f"Expected a Discrete action space, got {action_space}.")
        return cls(arch=arch, obs_shape=tuple(observation_space.shape), num_actions=int(action_space.n),
                   env_id=env_id, action_meanings=action_meanings, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------------------------


def _init_layer(layer: nn.Module, gain: float) -> nn.Module:
    """Orthogonal weights with ``gain``, zero bias (CleanRL's PPO initialisation)."""
    nn.init.orthogonal_(layer.weight, gain)  # type: ignore[arg-type]
    nn.init.zeros_(layer.bias)  # type: ignore[arg-type]
    return layer


def _flat_size(convs: nn.Module, in_channels: int, height: int, width: int, arch: str) -> int:
    """Number of features ``convs`` produce for one input, found by a dry run (so any frame size works)."""
    with torch.no_grad():
        try:
            out = convs(torch.zeros(1, in_channels, height, width))
        except RuntimeError as e:
            raise ValueError(
                f"Frames of {height}x{width} are too small for the {arch} trunk ({e}); use larger frames."
            ) from e
    return int(out.numel())


class NatureCNN(nn.Module):
    """Nature-DQN trunk: conv 8x8/4, 4x4/2, 3x3/1 (widths 32-64-64 by default), ReLU, then a linear layer + ReLU.

    On 64x64 frames the convs give 15x15, 6x6 and 4x4 maps (1024 features at width 64) — no padding is needed,
    the flatten size is measured for whatever frame size the config names.

    Input: float tensor (N, C_in, H, W) in [0, 1]. Output: float tensor (N, hidden_size).
    """

    def __init__(self, in_channels: int, height: int, width: int,
                 channels: tuple[int, ...] = (32, 64, 64), hidden_size: int = 512) -> None:
        super().__init__()
        c1, c2, c3 = channels
        gain = math.sqrt(2)
        self.convs = nn.Sequential(
            _init_layer(nn.Conv2d(in_channels, c1, 8, stride=4), gain), nn.ReLU(),
            _init_layer(nn.Conv2d(c1, c2, 4, stride=2), gain), nn.ReLU(),
            _init_layer(nn.Conv2d(c2, c3, 3, stride=1), gain), nn.ReLU(),
            nn.Flatten(),
        )
        flat = _flat_size(self.convs, in_channels, height, width, "nature")
        self.fc = nn.Sequential(_init_layer(nn.Linear(flat, hidden_size), gain), nn.ReLU())
        self.out_features = hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) float -> (N, hidden_size) features."""
        return self.fc(self.convs(x))


class _ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs keeping width and size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        gain = math.sqrt(2)
        self.conv0 = _init_layer(nn.Conv2d(channels, channels, 3, padding=1), gain)
        self.conv1 = _init_layer(nn.Conv2d(channels, channels, 3, padding=1), gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class _ConvSequence(nn.Module):
    """IMPALA stack: conv 3x3, max-pool 3x3/2 (halves H and W, rounding up), two residual blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _init_layer(nn.Conv2d(in_channels, out_channels, 3, padding=1), math.sqrt(2))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = _ResidualBlock(out_channels)
        self.res1 = _ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class ImpalaCNN(nn.Module):
    """IMPALA trunk (Espeholt et al. 2018, as in CleanRL's Procgen PPO): one conv stack per width, then ReLU,
    flatten, a linear layer + ReLU.

    On 64x64 frames with the default widths (16, 32, 32) the stacks give 32x32, 16x16, 8x8 maps (2048 features).

    Input: float tensor (N, C_in, H, W) in [0, 1]. Output: float tensor (N, hidden_size).
    """

    def __init__(self, in_channels: int, height: int, width: int,
                 channels: tuple[int, ...] = (16, 32, 32), hidden_size: int = 256) -> None:
        super().__init__()
        stacks: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            stacks.append(_ConvSequence(c_in, c_out))
            c_in = c_out
        self.convs = nn.Sequential(*stacks, nn.ReLU(), nn.Flatten())
        flat = _flat_size(self.convs, in_channels, height, width, "impala")
        self.fc = nn.Sequential(_init_layer(nn.Linear(flat, hidden_size), math.sqrt(2)), nn.ReLU())
        self.out_features = hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) float -> (N, hidden_size) features."""
        return self.fc(self.convs(x))


@runtime_checkable
class Policy(Protocol):
    """What a collector needs: a number of actions and ``act(obs) -> actions``."""

    num_actions: int

    def act(self, obs: ObsLike, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ObsLike:
        """Batch of observations (N, ...) -> int64 actions (N,)."""
        ...


def _as_output(actions: torch.Tensor, like: ObsLike) -> ObsLike:
    """Return actions as numpy when the observations came as numpy, else as the torch tensor."""
    return actions.cpu().numpy() if isinstance(like, np.ndarray) else actions


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one action per row of ``probs`` (N, A) with ``generator`` (sampled on the generator's device)."""
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class ActorCritic(nn.Module):
    """Shared-trunk actor-critic for uint8 image observations and ``Discrete(n)`` actions.

    Takes raw env observations — uint8, numpy or torch, shape ``(N, *config.obs_shape)`` i.e. (N, H, W, C) or
    (N, k, H, W, C) — and preprocesses them itself (see :meth:`PolicyConfig.preprocessing`), so a saved policy
    needs nothing but its folder. Method names and output shapes follow CleanRL's PPO agents.

    Args:
        config: architecture and the observation / action spec.
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        h, w, _ = config.frame_shape
        trunk_cls = NatureCNN if config.arch == "nature" else ImpalaCNN
        self.trunk = trunk_cls(config.in_channels, h, w, config.channels, config.hidden_size)  # type: ignore[arg-type]
        self.actor = _init_layer(nn.Linear(self.trunk.out_features, config.num_actions), 0.01)
        self.critic = _init_layer(nn.Linear(self.trunk.out_features, 1), 1.0)

    @property
    def num_actions(self) -> int:
        """Size n of the action space."""
        return self.config.num_actions

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.actor.weight.device

    @property
    def tag(self) -> str:
        """Short description for trajectory metadata, e.g. ``"actor_critic/impala"``."""
        return f"actor_critic/{self.config.arch}"

    def preprocess(self, obs: ObsLike) -> torch.Tensor:
        """uint8 (N, H, W, C) or (N, k, H, W, C) -> float32 (N, k*C, H, W) in [0, 1] on the policy's device.

        Raises:
            ValueError: wrong dtype, or a shape other than ``(N, *config.obs_shape)``.
        """
        x = obs
        if isinstance(x, np.ndarray):
            if x.dtype != np.uint8:
                raise ValueError(f"Observations must be uint8 frames, got a numpy array of dtype {x.dtype}.")
            # torch warns on read-only numpy memory (e.g. views handed out by envs); copy those.
            x = torch.from_numpy(x if x.flags.writeable else x.copy())
        elif not isinstance(x, torch.Tensor):
            raise ValueError(f"Observations must be a numpy array or torch tensor, got {type(obs).__name__}.")
        if x.dtype != torch.uint8:
            raise ValueError(f"Observations must be uint8 frames (0..255), got dtype {x.dtype}.")
        expected = tuple(self.config.obs_shape)
        if tuple(x.shape[1:]) != expected or x.ndim != len(expected) + 1:
            hint = ""
            if tuple(x.shape) == expected:
                hint = " It looks like a single observation: add a batch axis (obs[None])."
            raise ValueError(
                f"Expected observations of shape (N, {', '.join(map(str, expected))}) for this policy, got "
                f"{tuple(x.shape)}.{hint}"
            )
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        if x.ndim == 5:
            n, k, h, w, c = x.shape
            return x.permute(0, 1, 4, 2, 3).reshape(n, k * c, h, w)
        return x.permute(0, 3, 1, 2)

    def forward(self, obs: ObsLike) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 observations (N, ...) -> (logits (N, num_actions), value (N, 1)), float32."""
        hidden = self.trunk(self.preprocess(obs))
        return self.actor(hidden), self.critic(hidden)

    def get_value(self, obs: ObsLike) -> torch.Tensor:
        """Critic estimate, float32 (N, 1)."""
        return self.critic(self.trunk(self.preprocess(obs)))

    def get_action_and_value(
        self, obs: ObsLike, action: ObsLike | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or score) actions, CleanRL style.

        Args:
            obs: uint8 observations (N, ...).
            action: optional actions (N,) to evaluate instead of sampling (PPO's update step).

        Returns:
            ``(action (N,) int64, logprob (N,), entropy (N,), value (N, 1))``; all but the action carry gradients.
        """
        logits, value = self(obs)
        dist = Categorical(logits=logits)
        if action is None:
            action = dist.sample()
        else:
            action = torch.as_tensor(action, device=logits.device).long()
            if action.shape != logits.shape[:1]:
                raise ValueError(f"Expected actions of shape ({logits.shape[0]},), got {tuple(action.shape)}.")
        return action, dist.log_prob(action), dist.entropy(), value

    @torch.no_grad()
    def act(self, obs: ObsLike, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ObsLike:
        """Actions for a collector: int64 (N,), numpy if ``obs`` is numpy, else a tensor on the policy's device.

        A policy whose logits are Q-values (``config.extra["logits"] == "q_values"``, as ``offline/cql.py`` saves
        its Q-network) always takes its greedy action, argmax Q: a softmax over values is not a policy the learner
        trained, and its randomness would depend on the reward scale. Explore with the collectors' epsilon instead.

        Args:
            obs: uint8 observations (N, ...).
            deterministic: take the most likely action instead of sampling.
            generator: torch generator driving the sampling (reproducible runs); torch's global RNG when None.
        """
        logits, _ = self(obs)
        if deterministic or self.config.extra.get("logits") == "q_values":
            actions = logits.argmax(dim=1)
        else:
            actions = _sample(torch.softmax(logits, dim=1), generator)
        return _as_output(actions, obs)


class RandomPolicy:
    """Uniform random actions with :class:`ActorCritic`'s ``act`` interface (the collectors' default policy).

    Args:
        num_actions: size n of the ``Discrete(n)`` action space.
        seed: seeds the policy's own generator; ``None`` draws a fresh seed.
    """

    tag = "random"

    def __init__(self, num_actions: int, seed: int | None = None) -> None:
        if int(num_actions) < 1:
            raise ValueError(f"RandomPolicy needs num_actions >= 1, got {num_actions}.")
        self.num_actions = int(num_actions)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def act(self, obs: ObsLike, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ObsLike:
        """One uniform action per row of ``obs`` (N, ...): int64 (N,), numpy for numpy input, else a tensor on
        ``obs``'s device.

        ``deterministic`` is accepted for interface compatibility and ignored: a uniform policy has no most-likely
        action, so it always samples. ``generator`` overrides the policy's own seeded generator.
        """
        if not isinstance(obs, (np.ndarray, torch.Tensor)) or obs.ndim < 1:
            raise ValueError("RandomPolicy.act expects a batch of observations with a leading axis (N, ...).")
        gen = generator if generator is not None else self.generator
        actions = torch.randint(self.num_actions, (int(obs.shape[0]),), generator=gen, device=gen.device)
        if isinstance(obs, torch.Tensor):
            return actions.to(obs.device)
        return actions.cpu().numpy()


# --------------------------------------------------------------------------------------------------------------------
# Env compatibility
# --------------------------------------------------------------------------------------------------------------------


def _env_action_meanings(env: Any) -> list[str] | None:
    """Action names an env (single or vector, possibly wrapped) exposes, or None."""
    for candidate in (env, getattr(env, "unwrapped", None)):
        if candidate is None:
            continue
        meanings = getattr(candidate, "action_meanings", None)
        if meanings is None and callable(getattr(candidate, "get_action_meanings", None)):
            meanings = candidate.get_action_meanings()
        if meanings is not None:
            return [str(m) for m in meanings]
    return None


def check_policy_matches(
    policy: ActorCritic | PolicyConfig,
    observation_space: Any,
    action_space: Any,
    *,
    action_meanings: list[str] | None = None,
) -> None:
    """Raise ValueError unless ``policy`` can act in an env with these (single-env) spaces.

    Checks: the observation space is a uint8 ``Box`` of exactly ``config.obs_shape`` (so the frame stack agrees),
    the action space is ``Discrete(config.num_actions)`` starting at 0, and — when both sides name their actions —
    the names agree (same count of actions from two different games would otherwise pass silently).

    For a vector env pass ``envs.single_observation_space`` and ``envs.single_action_space``.
    """
    from gymnasium.spaces import Box, Discrete, MultiDiscrete

    config = policy.config if isinstance(policy, ActorCritic) else policy
    if not isinstance(config, PolicyConfig):
        raise ValueError(f"Expected an ActorCritic or PolicyConfig, got {type(policy).__name__}.")
    problems: list[str] = []
    if not isinstance(observation_space, Box):
        problems.append(f"observation space {observation_space} is not a Box of uint8 frames")
    else:
        shape = tuple(observation_space.shape)
        if shape != config.obs_shape:
            msg = f"observation shape {shape} != the policy's {config.obs_shape}"
            if shape[1:] == config.obs_shape:
                msg += " (this looks like a batched vector-env space: pass envs.single_observation_space)"
            elif shape[-3:] == config.frame_shape:
                msg += f" (frame stack differs: the policy was trained with frame_stack={config.frame_stack})"
            problems.append(msg)
        if observation_space.dtype != np.uint8:
            problems.append(f"observation dtype {observation_space.dtype} is not uint8")
    if isinstance(action_space, MultiDiscrete):
        problems.append(f"action space {action_space} is batched: pass envs.single_action_space (a Discrete)")
    elif not isinstance(action_space, Discrete):
        problems.append(f"action space {action_space} is not Discrete")
    else:
        if int(action_space.n) != config.num_actions:
            problems.append(f"env has {int(action_space.n)} actions, the policy {config.num_actions}")
        if int(action_space.start) != 0:
            problems.append(f"action space starts at {int(action_space.start)}, the policy's actions start at 0")
    if action_meanings is not None and config.action_meanings is not None:
        if [str(m) for m in action_meanings] != config.action_meanings:
            problems.append(f"env action meanings {list(action_meanings)} != the policy's {config.action_meanings}")
    if problems:
        raise ValueError(
            f"Policy (env_id={config.env_id!r}) does not fit this env: " + "; ".join(problems)
            + ". Use a policy trained for this env's observation/action spec, or make the env with matching "
            "options (e.g. frame_stack)."
        )


# --------------------------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------------------------


def _is_policy_folder(path: Path) -> bool:
    """True when ``path`` holds a config.json written by :func:`save_policy` (safe to replace)."""
    try:
        meta = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("type") == _TYPE_TAG


def save_policy(policy: ActorCritic, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``policy`` to the folder ``path`` as ``config.json`` + ``model.safetensors``, atomically.

    The checkpoint is built in a temporary folder next to ``path`` and renamed into place. An existing checkpoint
    at ``path`` is moved aside only after the new one is complete, and deleted after the new one is in place, so an
    interrupted save leaves either the old or the new checkpoint (if it stops between the two renames, the old one
    waits beside ``path`` as ``.<name>.old-*`` and :func:`load_policy` says so).

    Args:
        policy: the actor-critic to save (weights are copied to CPU).
        path: target folder; its parent is created if needed.
        extra: JSON-serializable metadata merged over ``policy.config.extra`` in the saved config (e.g. step).

    Returns:
        The checkpoint folder path.

    Raises:
        ValueError: ``policy`` is not an ActorCritic, metadata is not JSON-serializable, or ``path`` exists and is
            not a policy checkpoint (never deleted).
    """
    if not isinstance(policy, ActorCritic):
        raise ValueError(f"save_policy saves an ActorCritic, got {type(policy).__name__}.")
    path = Path(path)
    if path.exists() and not (path.is_dir() and _is_policy_folder(path)):
        raise ValueError(
            f"{path} exists and is not a policy checkpoint written by save_policy; refusing to replace it. "
            "Choose another path or remove it yourself."
        )
    config = policy.config.to_dict()
    config["extra"] = {**config["extra"], **(extra or {})}
    meta = {"format_version": FORMAT_VERSION, "type": _TYPE_TAG, "preprocessing": policy.config.preprocessing(),
            **config}
    try:
        config_text = json.dumps(meta, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"Policy metadata is not JSON-serializable ({e}); check config.extra / extra.") from e
    # safetensors refuses views sharing memory; detached contiguous CPU copies are always accepted.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in policy.state_dict().items()}

    def write(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(config_text)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "format_version": str(FORMAT_VERSION)})

    return write_folder_atomically(path, write)


def _read_config(path: Path) -> PolicyConfig:
    """Parse and validate ``path/config.json``."""
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(
            f"Policy checkpoint {path} has no {CONFIG_NAME}; it is incomplete or not a policy folder. Re-save it "
            "with dws_gym.agents.save_policy."
        )
    try:
        meta = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file} is not valid JSON ({e}). Restore it or re-save the policy.") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(meta).__name__}.")
    version = meta.get("format_version")
    if version is None:
        raise ValueError(f"{config_file} has no 'format_version'; it was not written by save_policy.")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{config_file} has format_version {version!r}; this dws_gym reads version {FORMAT_VERSION}. "
            + ("Upgrade dws_gym to load it." if isinstance(version, int) and version > FORMAT_VERSION
               else "Re-save the policy with save_policy.")
        )
    fields = {k: v for k, v in meta.items() if k not in _META_KEYS}
    try:
        return PolicyConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_file} does not describe a valid policy: {e}") from e


def load_policy(path: str | os.PathLike[str], device: str | torch.device = "cpu", *, env: Any = None) -> ActorCritic:
    """Load a checkpoint folder written by :func:`save_policy` (strict: every weight present with its shape).

    Args:
        path: the checkpoint folder.
        device: where to put the policy.
        env: optional gymnasium env or vector env; when given, :func:`check_policy_matches` runs against its
            single-env spaces and action meanings.

    Returns:
        The policy in eval mode on ``device``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message names it).
        ValueError: bad JSON, unknown format version, weights that do not match the config, or a policy that does
            not fit ``env``.
    """
    path = Path(path)
    if not path.is_dir():
        if path.exists():
            raise ValueError(f"{path} is a file; load_policy expects the checkpoint folder that holds it.")
        leftovers = sorted(p.name for p in path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = (f" An interrupted save left the previous checkpoint at {path.parent / leftovers[-1]}; rename it to "
                f"{path} to use it." if leftovers else "")
        raise FileNotFoundError(f"No policy checkpoint folder at {path}.{hint}")
    config = _read_config(path)
    weights_file = path / WEIGHTS_NAME
    if not weights_file.is_file():
        raise FileNotFoundError(
            f"Policy checkpoint {path} has no {WEIGHTS_NAME}; the weights are missing. Copy the complete folder or "
            "re-save the policy."
        )
    try:
        state = load_file(str(weights_file), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights_file} is not a readable safetensors file ({e}); re-save the policy.") from e

    policy = ActorCritic(config)
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing weights {missing}")
        if unexpected:
            details.append(f"unexpected weights {unexpected}")
        if wrong:
            details.append("shape mismatches " + "; ".join(wrong))
        raise ValueError(
            f"{weights_file} does not match {path / CONFIG_NAME} (arch={config.arch!r}, obs_shape={config.obs_shape}, "
            f"num_actions={config.num_actions}): " + "; ".join(details)
            + ". The config was edited or the files come from different checkpoints; re-save with save_policy."
        )
    policy.load_state_dict(state, strict=True)
    policy.to(device).eval()
    if env is not None:
        obs_space = getattr(env, "single_observation_space", env.observation_space)
        act_space = getattr(env, "single_action_space", env.action_space)
        check_policy_matches(policy, obs_space, act_space, action_meanings=_env_action_meanings(env))
    return policy
