"""The Simulator: a DWS world model + reward / termination head + bundled start states, with Hub I/O.

Step protocol (docs/ARCHITECTURE.md, 'Step protocol'), the one API the dream env, evaluation and play call::

    state = sim.init_state(frames, actions)        # frames uint8 (N, K, H, W, 3); actions (N, K-1)
    frame, reward, terminated, state = sim.step(state, action, generator=g)   # frame uint8 (N, H, W, 3)
    state = sim.reset_where(state, mask, frames, actions)                      # re-seed a subset of the batch

All work is batched on the simulator's device; randomness comes only from the passed generator.

Precision: ``Simulator.from_pretrained(..., dtype="fp32" | "bf16" | "auto")`` or :meth:`Simulator.set_precision`.
In bf16 the world model and reward head weights are cast to bfloat16 (``"auto"``: only where the hardware has native
bf16, see :func:`dws_gym.hardware.resolve_precision`); frames stay uint8, rewards float32, terminations bool.
``sim.precision`` says what runs and why.

On disk a simulator is one self-contained folder (docs/ARCHITECTURE.md, 'Simulator folder')::

    simulator_config.json       format version, env id, action meanings, context, sampling steps, provenance, metrics
    world_model/                the backbone's own config + safetensors weights (cached action embeddings included)
    reward_head.safetensors     reward / termination head (config in the file's metadata)
    start_states.safetensors    real start clips: frames uint8 (S, K, H, W, 3), actions int64 (S, K-1)
    README.md                   model card

:meth:`Simulator.from_pretrained` takes that folder or a Hugging Face Hub repo id; :meth:`Simulator.push_to_hub`
uploads it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dws_gym.checks import is_positive_int
from dws_gym.fileio import load_safetensors, write_folder_atomically
from dws_gym.hardware import Precision, resolve_precision
from dws_gym.models.reward import RewardHead, load_reward_head, save_reward_head

SIMULATOR_FORMAT_VERSION = 1
CONFIG_NAME = "simulator_config.json"
WORLD_MODEL_DIR = "world_model"
REWARD_NAME = "reward_head.safetensors"
START_STATES_NAME = "start_states.safetensors"
CARD_NAME = "README.md"
REQUIRED_FILES = (CONFIG_NAME, REWARD_NAME, START_STATES_NAME)


@dataclass
class SimulatorConfig:
    """What a simulator simulates and how it was made (``simulator_config.json``).

    Attributes:
        env_id: The real env it imitates (e.g. ``"ALE/Breakout-v5"``).
        action_meanings: Names of the discrete actions, in index order.
        obs_shape: One frame, ``(H, W, 3)``.
        context_frames: ``K``, the frames a step conditions on (and the start clips hold).
        sampling_steps: Default Euler steps per environment step.
        backbone: ``"unet"`` (pixel U-Net, :mod:`dws_gym.models.unet`) or ``"flow"`` (rectified-flow Wan).
        pretrained_backbone: Hub id / folder of the pre-trained video model it was fine-tuned from; ``None`` when
            the backbone was trained from scratch.
        training: Free-form description of the training run (data, command, steps, throughput).
        metrics: Held-out metrics (the table of ``train_world_model.py``), free-form.
        format_version: On-disk format version.
    """

    env_id: str
    action_meanings: list[str]
    obs_shape: tuple[int, int, int] = (64, 64, 3)
    context_frames: int = 4
    sampling_steps: int = 4
    backbone: str = "flow"
    pretrained_backbone: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = SIMULATOR_FORMAT_VERSION

    @property
    def num_actions(self) -> int:
        return len(self.action_meanings)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["obs_shape"] = list(self.obs_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "simulator_config.json") -> SimulatorConfig:
        """Parse the JSON form of :meth:`to_dict` and :meth:`validate` it.

        Raises:
            ValueError: not a JSON object, unknown or missing keys, an unsupported ``format_version`` or a field of
                the wrong type or range; the message starts with ``source`` and names the field.
        """
        if not isinstance(d, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(d).__name__}; re-save the simulator.")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{source}: unknown keys {sorted(unknown)}; was it written by a newer dws-gym?")
        version = d.get("format_version")
        if version != SIMULATOR_FORMAT_VERSION:
            raise ValueError(
                f"{source}: format_version {version!r} is not supported (this dws-gym reads "
                f"{SIMULATOR_FORMAT_VERSION}); upgrade dws-gym or re-save the simulator."
            )
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in d]
        if missing:
            raise ValueError(f"{source}: required field(s) {missing} are missing; add them or re-save the simulator.")
        d = dict(d)
        shape = d.get("obs_shape", (64, 64, 3))
        d["obs_shape"] = tuple(shape) if isinstance(shape, (list, tuple)) else shape
        config = cls(**d)
        config.validate(source)
        return config

    def validate(self, source: str = "SimulatorConfig") -> None:
        """Check every field's type and range; ``source`` (the file) starts the message.

        Raises:
            ValueError: naming the first bad field, what it must be and what it holds.
        """

        def bad(name: str, want: str) -> ValueError:
            value = getattr(self, name)
            return ValueError(
                f"{source}: field '{name}' must be {want}, got {value!r} ({type(value).__name__}); fix the file or "
                "re-save the simulator."
            )

        if not isinstance(self.env_id, str) or not self.env_id:
            raise bad("env_id", "a non-empty string (e.g. 'ALE/Breakout-v5')")
        meanings = self.action_meanings
        if not isinstance(meanings, list) or not meanings or not all(isinstance(m, str) for m in meanings):
            raise bad("action_meanings", "a non-empty list of action names")
        if not (isinstance(self.obs_shape, tuple) and len(self.obs_shape) == 3
                and all(is_positive_int(s) for s in self.obs_shape)):
            raise bad("obs_shape", "[H, W, C], three positive integers")
        for name in ("context_frames", "sampling_steps"):
            if not is_positive_int(getattr(self, name)):
                raise bad(name, "an integer >= 1")
        if not isinstance(self.backbone, str):
            raise bad("backbone", "'flow' or 'unet'")
        if self.pretrained_backbone is not None and not isinstance(self.pretrained_backbone, str):
            raise bad("pretrained_backbone", "a Hub id, a folder or null")
        for name in ("training", "metrics"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "a JSON object")


@dataclass
class SimState:
    """The batched state of a simulator: the last ``K`` frames and the ``K - 1`` actions between them.

    Attributes:
        frames: ``(N, K, H, W, 3)`` uint8 on the simulator's device, oldest first.
        actions: ``(N, K - 1)`` int64 on the simulator's device; ``actions[:, i]`` led from frame ``i`` to ``i + 1``.
        head_tokens: A rolling cache: the reward head's patch tokens of ``frames``, ``(N, K, T, D)`` in the head's
            dtype (:meth:`~dws_gym.models.reward.RewardHead.frame_tokens`), so that a step embeds only its new
            frame; ``None``: each step embeds the frames the head reads and the new one (the uncached path). Its
            size is fixed: a step drops the oldest frame's tokens as it adds the newest.
    """

    frames: torch.Tensor
    actions: torch.Tensor
    head_tokens: torch.Tensor | None = None

    @property
    def num_envs(self) -> int:
        return int(self.frames.shape[0])

    def clone(self) -> SimState:
        tokens = None if self.head_tokens is None else self.head_tokens.clone()
        return SimState(self.frames.clone(), self.actions.clone(), tokens)

    def rows(self, index: torch.Tensor) -> SimState:
        """The simulations at ``index`` (int64 indices or a bool mask over ``N``), as a new state."""
        tokens = None if self.head_tokens is None else self.head_tokens[index]
        return SimState(self.frames[index], self.actions[index], tokens)

    def set_rows(self, index: torch.Tensor, other: SimState) -> None:
        """Write ``other`` (one row per entry of ``index``) into the simulations at ``index``, in place.

        A cached state that receives an uncached one drops its cache (the next step embeds every frame again).
        """
        self.frames[index] = other.frames
        self.actions[index] = other.actions
        if self.head_tokens is not None:
            if other.head_tokens is None or other.head_tokens.dtype != self.head_tokens.dtype:
                self.head_tokens = None
            else:
                self.head_tokens[index] = other.head_tokens


def _float_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 when it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _cast_world_model(world_model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast a backbone's weights for stepping, in place.

    The flow backbone casts its transformer only (what ``FlowWorldModel.from_pretrained(dtype=)`` does: its action
    embedder and decoding stay float32); every other backbone (the U-Net) casts parameters and buffers whole, since
    its ``sample_next`` runs in the dtype of its weights.
    """
    transformer = getattr(world_model, "transformer", None)
    if transformer is None:
        world_model.to(dtype)
        return
    try:  # diffusers logs that Wan keeps some modules in float32 when loaded with torch_dtype; not used here
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - diffusers is a dependency
        diffusers_logging = None
    try:
        transformer.to(dtype)
    finally:
        if diffusers_logging is not None:
            diffusers_logging.set_verbosity(level)


def _cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast a module's floating-point parameters, not its buffers (the reward head's value tables stay float32)."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _load_world_model(folder: Path, backbone: str, device: torch.device | str) -> torch.nn.Module:
    if backbone == "flow":
        from dws_gym.models.flow import FlowWorldModel

        return FlowWorldModel.from_pretrained(folder, device=device)
    if backbone == "unet":
        from dws_gym.models.unet import UNetWorldModel

        return UNetWorldModel.from_pretrained(folder, device=device)
    raise ValueError(f"Unknown backbone {backbone!r} in the simulator config; this dws-gym knows 'flow' and 'unet'.")


class Simulator:
    """A DWS world simulator: ``world_model`` (frames) + ``reward_head`` (reward, termination) + start states.

    Args:
        config: What it simulates and how it was made.
        world_model: A backbone with ``sample_next(context_frames, context_actions, action, steps, generator)``
            and ``save_pretrained(folder)`` (e.g. :class:`~dws_gym.models.flow.FlowWorldModel`).
        reward_head: A :class:`~dws_gym.models.reward.RewardHead` reading ``K`` context frames.
        start_frames: ``(S, K, H, W, 3)`` uint8 real start clips (the default start-state distribution).
        start_actions: ``(S, K - 1)`` int64 actions of those clips.

    Attributes:
        precision: The :class:`~dws_gym.hardware.Precision` :meth:`step` runs in and why (``precision.reason``);
            float32 unless :meth:`set_precision` / ``from_pretrained(dtype=)`` chose bf16, or the world model was
            given in bfloat16.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        world_model: torch.nn.Module,
        reward_head: RewardHead,
        start_frames: np.ndarray | torch.Tensor,
        start_actions: np.ndarray | torch.Tensor,
    ) -> None:
        self.config = config
        self.world_model = world_model.eval()
        self.reward_head = reward_head.eval()
        k = config.context_frames
        if reward_head.config.context_frames != k:
            raise ValueError(
                f"reward head reads {reward_head.config.context_frames} context frames but the simulator uses {k}."
            )
        frames = torch.as_tensor(np.asarray(start_frames) if not torch.is_tensor(start_frames) else start_frames)
        actions = torch.as_tensor(np.asarray(start_actions) if not torch.is_tensor(start_actions) else start_actions)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != (k, *config.obs_shape) or frames.dtype != torch.uint8:
            raise ValueError(
                f"start_frames must be uint8 (S, {k}, {', '.join(map(str, config.obs_shape))}), "
                f"got {frames.dtype} {tuple(frames.shape)}."
            )
        if tuple(actions.shape) != (frames.shape[0], k - 1):
            raise ValueError(f"start_actions must be ({frames.shape[0]}, {k - 1}), got {tuple(actions.shape)}.")
        self.start_frames = frames.cpu()
        self.start_actions = actions.long().cpu()
        self.compiled: str | None = None  # what :meth:`compile` set up, None when eager
        given = _float_dtype(getattr(self.world_model, "transformer", self.world_model))
        self._dtype_request = "bf16" if given == torch.bfloat16 else "fp32"
        self.precision: Precision = resolve_precision(self._dtype_request, self.device)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.world_model.parameters()).device

    @property
    def num_actions(self) -> int:
        return self.config.num_actions

    @property
    def context_frames(self) -> int:
        return self.config.context_frames

    def to(self, device: str | torch.device) -> Simulator:
        """Move the world model and reward head to ``device`` (start clips stay on the CPU until used).

        A simulator set to ``dtype="auto"`` decides its precision again for the new device.
        """
        self.world_model.to(device)
        self.reward_head.to(device)
        if self._dtype_request == "auto":
            self.set_precision("auto")
        else:
            self.precision = resolve_precision(self._dtype_request, self.device)
        return self

    def set_precision(self, dtype: str | torch.dtype = "auto") -> Precision:
        """Choose the precision :meth:`step` runs in: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where the device
        has native bf16, see :func:`~dws_gym.hardware.resolve_precision`). Returns it (also ``self.precision``).

        bf16 casts the weights of the world model and the reward head (the reward head's reward value tables stay
        float32), in place. Casting was the faster of the two ways measured: the default-size U-Net simulator at 64
        envs on one thread of an AMX Xeon (a shared 2-core machine; medians of interleaved repeats) stepped
        196-225 transitions/s with cast weights, 188-192 with float32 weights under ``torch.autocast`` (which
        re-casts every weight on every call) and ~95 in fp32; ``bench/dream_env.py --bf16-mode autocast`` compares
        them.
        Going back to ``"fp32"`` after bf16 casts the weights back, but they keep their bf16 rounding; reload the
        simulator for its exact float32 weights. :meth:`save_pretrained` always writes float32.

        Raises:
            ValueError: ``dtype`` is not one of ``"auto"``, ``"bf16"``, ``"fp32"``.
        """
        precision = resolve_precision(dtype, self.device)
        _cast_world_model(self.world_model, precision.dtype)
        _cast_parameters(self.reward_head, precision.dtype)
        self._dtype_request = dtype if isinstance(dtype, str) else precision.name
        self.precision = precision
        return precision

    def compile(self, enabled: bool = True, **options: Any) -> str | None:
        """``torch.compile`` the world model's sampling work (the U-Net's ``denoise``: the network, the Euler steps
        and the uint8 conversions; the flow transformer's ``_network``) and the reward head's tensor work (see
        :meth:`compile_targets`), or undo both with ``enabled=False``. Returns a description of what runs,
        ``None`` when eager.

        The first steps after compiling (and after each new batch size, until the compiler makes the batch dynamic)
        are slow while it compiles; every later step runs the compiled kernels. Measured on a shared 2-core AMX Xeon
        (one thread), the shipped Breakout U-Net at 64 envs: 194.7 transitions/s eager and 235.9 compiled in bf16
        (1.21x), 90.0 and 99.5 in fp32 (same run, ``bench/dream_env.py --compile both``; only the world model was
        compiled then). With the reward head compiled too, on an AMD EPYC with avx512_bf16 (two threads): 333.0 and
        453.7 in bf16 (1.36x), 167.4 and 252.3 in fp32. Frames agree with the eager step to float rounding, not
        bitwise.

        Args:
            enabled: compile (``True``) or go back to the eager call (``False``).
            **options: passed to ``torch.compile`` (e.g. ``backend=``, ``mode=``, ``dynamic=``).

        Raises:
            ValueError: the world model has no known network call.
        """
        targets = self.compile_targets()
        for owner, name in targets:
            owner.__dict__.pop(name, None)  # back to the class's eager methods
        if not enabled:
            self.compiled = None
            return None
        # An instance attribute shadows the method. The head's input checks are not compiled (they read values on
        # the host, and step() does not need them); its tensor work was about a quarter of a bf16 CPU step.
        for owner, name in targets:
            setattr(owner, name, torch.compile(getattr(owner, name), **options))
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
        calls = ", ".join(f"{type(owner).__name__}.{name}" for owner, name in targets)
        self.compiled = f"torch.compile({calls}{', ' + shown if shown else ''})"
        return self.compiled

    def compile_targets(self) -> list[tuple[torch.nn.Module, str]]:
        """The ``(module, method name)`` pairs :meth:`compile` replaces with compiled versions: the world model's
        network call and the reward head's two halves, :meth:`~dws_gym.models.reward.RewardHead.frame_tokens` and
        :meth:`~dws_gym.models.reward.RewardHead.logits_from_tokens` (its ``logits`` calls both).

        Raises:
            ValueError: the world model has no known network call.
        """
        wm = self.world_model
        name = next((n for n in ("denoise", "_network") if callable(getattr(type(wm), n, None))), None)
        if name is None:
            raise ValueError(f"Simulator.compile does not know the network call of {type(wm).__name__}.")
        return [(wm, name), (self.reward_head, "frame_tokens"), (self.reward_head, "logits_from_tokens")]

    # ------------------------------------------------------------------------------------------- validation
    def _frames(self, frames: Any, name: str = "frames") -> torch.Tensor:
        f = torch.as_tensor(frames) if not torch.is_tensor(frames) else frames
        k, shape = self.context_frames, tuple(self.config.obs_shape)
        if f.dtype != torch.uint8 or f.ndim != 5 or tuple(f.shape[1:]) != (k, *shape):
            raise ValueError(
                f"{name} must be uint8 (N, {k}, {', '.join(map(str, shape))}) — N envs, the last {k} frames each — "
                f"got {f.dtype} {tuple(f.shape)}."
            )
        return f.to(self.device)

    def check_actions(self, action: Any, shape: tuple[int, ...], name: str = "action") -> torch.Tensor:
        """Validate discrete actions (integers in ``[0, num_actions)``, given shape); return int64 on the device."""
        if torch.is_tensor(action):
            a = action
        else:
            arr = np.array(action)  # a copy: the caller's array may be read-only
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"{name} must be integer action indices, got values of dtype {arr.dtype}.")
            a = torch.as_tensor(arr)
        if tuple(a.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(a.shape)}.")
        if a.dtype == torch.bool or a.is_complex():
            raise ValueError(f"{name} must be integer action indices, got dtype {a.dtype}.")
        if a.dtype.is_floating_point:
            bad = ~torch.isfinite(a)
            if bool(bad.any()):
                raise ValueError(f"{name} contains NaN or inf at positions {_first(bad)}.")
            bad = a != a.round()
            if bool(bad.any()):
                raise ValueError(f"{name} must hold integer action indices; non-integer values at {_first(bad)}.")
        # Range check before any cast, so huge floats are reported as they are (not as overflowed int64).
        bad = (a < 0) | (a >= self.num_actions)
        if bool(bad.any()):
            where = _first(bad)
            raise ValueError(
                f"{name} must lie in [0, {self.num_actions}) ({', '.join(self.config.action_meanings)}); "
                f"out of range at positions {where}: {a.reshape(-1)[torch.as_tensor(where)].tolist()}."
            )
        return a.long().to(self.device)

    # ------------------------------------------------------------------------------------------- step protocol
    @torch.no_grad()
    def init_state(self, frames: Any, actions: Any, *, cache: bool = True) -> SimState:
        """Start ``N`` simulations from real context clips: frames uint8 (N, K, H, W, 3), actions (N, K-1).

        ``cache``: keep the reward head's tokens of the context frames in the state (``SimState.head_tokens``), so
        that each :meth:`step` embeds only its new frame; ``False`` gives the uncached state, whose steps embed
        every frame the head reads and the new one (the same results up to float rounding).
        """
        f = self._frames(frames)
        a = self.check_actions(actions, (f.shape[0], self.context_frames - 1), "actions")
        tokens = self.reward_head.frame_tokens(f) if cache else None
        return SimState(f.clone(), a.clone(), tokens)

    def _context_tokens(self, state: SimState) -> torch.Tensor | None:
        """The state's cached head tokens; embedded again when they no longer fit the head (after
        :meth:`set_precision` or :meth:`to`); ``None`` for an uncached state."""
        tokens = state.head_tokens
        if tokens is None:
            return None
        head = self.reward_head
        want = (state.num_envs, self.context_frames, head.num_tokens, head.config.dim)
        if tokens.dtype != head.pos.dtype or tokens.device != head.device or tuple(tokens.shape) != want:
            tokens = head.frame_tokens(state.frames)
        return tokens

    @torch.no_grad()
    def step(
        self,
        state: SimState,
        action: Any,
        generator: torch.Generator | None = None,
        *,
        steps: int | None = None,
        sample_reward: bool = False,
        sample_termination: bool = False,
        validate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, SimState]:
        """Advance every simulation by one action.

        Args:
            state: From :meth:`init_state` / a previous step.
            action: ``(N,)`` integer actions.
            generator: The only source of randomness (sampling noise, and reward / termination if sampled).
            steps: Euler steps (``None``: ``config.sampling_steps``).
            sample_reward: Sample the reward from the head's distribution instead of its predicted value.
            sample_termination: Bernoulli termination instead of ``probability > 0.5``.
            validate: Check ``action``; pass ``False`` only for an int64 tensor on the device that already went
                through :meth:`check_actions` (saves the checks' device syncs on a hot path).

        Returns:
            ``(frame uint8 (N, H, W, 3), reward float32 (N,), terminated bool (N,), new state)``, all on the device.
        """
        n = state.num_envs
        a = self.check_actions(action, (n,)) if validate else action
        steps = self.config.sampling_steps if steps is None else steps
        head = self.reward_head
        # In bf16 the weights themselves are bfloat16 (set_precision): no autocast needed, frames come back uint8.
        frame = self.world_model.sample_next(state.frames, state.actions, a, steps=steps, generator=generator)
        # The head's inputs are known good here (frames from the model, actions checked): its tensor work only.
        tokens = self._context_tokens(state)
        if tokens is None:
            out = head.logits(state.frames, a, frame)
        else:
            tokens = torch.cat([tokens, head.frame_tokens(frame[:, None])], dim=1)
            out = head.logits_from_tokens(tokens, a)
        sample = sample_reward or sample_termination
        reward, terminated = head.decide(out, sample=sample, generator=generator, end_on_reward=False)
        if sample_reward != sample_termination:
            # decide() samples both or neither: take the deterministic part that was not asked to be sampled.
            det_reward, det_term = head.decide(out, sample=False, end_on_reward=False)
            reward = reward if sample_reward else det_reward
            terminated = terminated if sample_termination else det_term
        if self.reward_head.config.reward_ends_episode:  # on the pair returned: a paid step ends the game
            terminated = terminated | (reward != 0)
        frames = torch.cat([state.frames[:, 1:], frame[:, None]], dim=1)
        actions = torch.cat([state.actions[:, 1:], a[:, None]], dim=1) if state.actions.shape[1] else state.actions
        reward = reward.to(self.device, torch.float32)
        terminated = terminated.to(self.device, torch.bool)
        return frame, reward, terminated, SimState(frames, actions, None if tokens is None else tokens[:, 1:])

    def reset_where(self, state: SimState, mask: Any, frames: Any, actions: Any) -> SimState:
        """Re-seed the simulations where ``mask`` (bool (N,)) is True with new context clips.

        ``frames`` / ``actions`` hold either one clip per env (N, ...) or one per True entry of ``mask``.
        """
        m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).to(self.device)
        if m.dtype != torch.bool or tuple(m.shape) != (state.num_envs,):
            raise ValueError(f"mask must be bool ({state.num_envs},), got {m.dtype} {tuple(m.shape)}.")
        f = self._frames(frames)
        a = self.check_actions(actions, (f.shape[0], self.context_frames - 1), "actions")
        count = int(m.sum())
        if f.shape[0] == state.num_envs:
            f, a = f[m], a[m]
        elif f.shape[0] != count:
            raise ValueError(
                f"reset_where got {f.shape[0]} clips for {count} masked envs of {state.num_envs}: pass one clip per "
                "env or one per True mask entry."
            )
        new = state.clone()
        new.frames[m] = f
        new.actions[m] = a
        tokens = self._context_tokens(new)
        if tokens is not None:
            with torch.no_grad():
                tokens[m] = self.reward_head.frame_tokens(f)
            new.head_tokens = tokens
        return new

    # ------------------------------------------------------------------------------------------- disk / hub
    def save_pretrained(self, folder: str | os.PathLike, *, card: bool = True) -> Path:
        """Write the simulator folder atomically (a complete folder replaces an older one only once written).

        Weights are written in float32 whatever :attr:`precision` the simulator steps in.
        """
        folder = Path(folder)
        if folder.exists() and not (folder / CONFIG_NAME).is_file():
            raise FileExistsError(f"{folder} exists and is not a simulator folder; choose another path.")
        wm_dtype = _float_dtype(getattr(self.world_model, "transformer", self.world_model))
        rh_dtype = _float_dtype(self.reward_head)
        _cast_world_model(self.world_model, torch.float32)
        _cast_parameters(self.reward_head, torch.float32)
        try:
            write_folder_atomically(folder, self._writer(card))
        finally:  # back to the stepping dtypes (bf16 -> fp32 -> bf16 is exact)
            _cast_world_model(self.world_model, wm_dtype)
            _cast_parameters(self.reward_head, rh_dtype)
        return folder

    def _writer(self, card: bool) -> Any:
        """The function that writes the folder's files into a temporary folder."""

        def write(tmp: Path) -> None:
            from safetensors.torch import save_file

            (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, allow_nan=False))
            self.world_model.save_pretrained(tmp / WORLD_MODEL_DIR)
            save_reward_head(self.reward_head, tmp / REWARD_NAME)
            save_file(
                {"frames": self.start_frames.contiguous(), "actions": self.start_actions.contiguous()},
                str(tmp / START_STATES_NAME),
            )
            if card:
                (tmp / CARD_NAME).write_text(self.model_card())

        return write

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str = "fp32",
        revision: str | None = None,
        local_files_only: bool | None = None,
    ) -> Simulator:
        """Load a simulator folder, or download one from the Hugging Face Hub by repo id (``"user/name"``).

        Args:
            path_or_repo_id: A simulator folder or a Hub repo id.
            device: Where the world model and reward head run.
            dtype: Stepping precision: ``"fp32"`` (default, the weights as saved), ``"bf16"``, or ``"auto"`` (bf16
                where ``device`` has native bf16); see :meth:`set_precision`.
            revision, local_files_only: Hub download options.

        Raises:
            FileNotFoundError: a required file is missing (the message names it), or the repo cannot be fetched
                (offline, unknown id); the message says how to get the files.
            ValueError: a config of an unknown format or with a bad field (wrong type or range, a missing
                ``env_id``, action meanings whose count differs from the model's actions), an empty or truncated
                weights file, weights that do not match their config (each message names the file), or a ``dtype``
                other than ``"auto"``, ``"bf16"``, ``"fp32"``.
        """
        resolve_precision(dtype, device)  # a bad dtype fails before anything is read or downloaded
        folder = resolve_simulator_path(path_or_repo_id, revision=revision, local_files_only=local_files_only)
        for name in REQUIRED_FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"Simulator folder {folder} has no {name}; a simulator needs {', '.join(REQUIRED_FILES)} and "
                    f"{WORLD_MODEL_DIR}/. Re-save it with Simulator.save_pretrained or re-download it."
                )
        try:
            config = SimulatorConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()), str(folder / CONFIG_NAME))
        except json.JSONDecodeError as e:
            raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON ({e}); re-download or re-save it.") from e
        if not (folder / WORLD_MODEL_DIR).is_dir():
            raise FileNotFoundError(f"Simulator folder {folder} has no {WORLD_MODEL_DIR}/ (the backbone's weights).")
        world_model = _load_world_model(folder / WORLD_MODEL_DIR, config.backbone, device)
        reward_head = load_reward_head(folder / REWARD_NAME, device=device)
        for part, part_config in (("world model", getattr(world_model, "config", None)),
                                  ("reward head", reward_head.config)):
            n = getattr(part_config, "num_actions", None)
            if isinstance(n, int) and n != config.num_actions:
                raise ValueError(
                    f"{folder / CONFIG_NAME}: field 'action_meanings' names {config.num_actions} actions but the "
                    f"{part} has {n}; give one name per action, in index order, or re-save the simulator."
                )
        starts, _ = load_safetensors(folder / START_STATES_NAME, "the simulator's start clips")
        if set(starts) != {"frames", "actions"}:
            raise ValueError(f"{folder / START_STATES_NAME} must hold 'frames' and 'actions', has {sorted(starts)}.")
        sim = cls(config, world_model, reward_head, starts["frames"], starts["actions"])
        sim.set_precision(dtype)
        return sim

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload dws-gym simulator",
    ) -> str:
        """Upload this simulator (the exact folder :meth:`save_pretrained` writes, model card included).

        Returns the URL of the commit.
        """
        from huggingface_hub import HfApi

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "simulator")
            api = HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return str(getattr(info, "commit_url", info))

    # ------------------------------------------------------------------------------------------- model card
    def model_card(self) -> str:
        """The README.md model card: what it simulates, how it was made, how well, how fast, how to use it."""
        c = self.config
        wm = getattr(self.world_model, "config", None)
        params = sum(p.numel() for p in self.world_model.parameters())
        rparams = sum(p.numel() for p in self.reward_head.parameters())
        if c.pretrained_backbone:
            pretraining = c.training.get("backbone_pretraining") or (
                "a text-to-video diffusion transformer with its own VAE and UMT5 text encoder, pre-trained by its "
                "authors on large-scale image and video data (see its model card)"
                if "wan" in c.pretrained_backbone.lower()
                else "a pre-trained video generative model (see its model card for its pre-training data)"
            )
            provenance = (
                f"Fine-tuned with DWS from `{c.pretrained_backbone}`: {pretraining}. The DWS action module and "
                "(depending on the training mode) the backbone were then trained on the data below."
            )
        elif c.training.get("initialised_from"):
            provenance = (
                "The backbone was **not pre-trained** on general video. "
                f"The world model's weights started from those of `{c.training['initialised_from']}` and were "
                "fine-tuned with DWS (the action module and the motion-reinforced loss) on the data below."
            )
        elif c.backbone == "unet":
            provenance = (
                "The backbone was **not pre-trained**: it is a small pixel-space U-Net built from diffusers' "
                "`ResnetBlock2D` blocks, trained from scratch on the data below, with the DWS action module (two linear "
                "layers per block regressing a scale and shift from the action embedding) and the motion-reinforced "
                "loss."
            )
        else:
            provenance = (
                "The backbone was **not pre-trained**: it is a small pixel-space Wan transformer trained from scratch on "
                "the data below, with the DWS action module and motion-reinforced loss."
            )
        meanings = ", ".join(f"{i}: {m}" for i, m in enumerate(c.action_meanings))
        training = "\n".join(f"- {k}: {v}" for k, v in c.training.items()
                             if k != "known_limits") or "- (not recorded)"  # limits: under Limitations
        metrics = c.metrics.get("table_markdown") if isinstance(c.metrics, dict) else None
        if not metrics:
            metrics = "\n".join(f"- {k}: {v}" for k, v in c.metrics.items()) or "(not measured)"
        elif c.metrics.get("evaluation_command"):
            metrics += f"\n\nMeasured by: `{c.metrics['evaluation_command']}`"
        fidelity = "held-out open-loop rollouts, next to copying the last frame"
        if isinstance(c.metrics, dict) and (c.metrics.get("events") or c.metrics.get("closed_loop")):
            fidelity += "; reward / termination events; closed-loop returns, real vs dream"
        limits = c.training.get("known_limits") or []
        known_limits = "".join(f"- {line}\n" for line in ([limits] if isinstance(limits, str) else limits))
        wm_desc = ""
        if wm is not None and hasattr(wm, "to_dict"):
            d = wm.to_dict()
            keys = ["space", "patch_size", "num_layers", "num_heads", "head_dim", "parametrization", "widths",
                    "cell", "action_mode", "changed_share", "motion_c", "t_one_prob", "t_one_hypotheses", "unroll",
                    "context_noise", "keep_below"]
            wm_desc = ", ".join(f"{k}={d[k]}" for k in keys if k in d)
        return f"""---
library_name: dws-gym
tags:
- world-model
- reinforcement-learning
- dws
- gymnasium
---

# DWS world simulator for `{c.env_id}`

A video world simulator made with Dynamic World Simulation (DWS): given the last {c.context_frames} frames and an
action it generates the next frame, and a reward / termination head scores the transition. Served as a gymnasium
vector env by [dws-gym](https://pypi.org/project/dws-gym/).

## Backbone

{provenance}

- backbone: `{c.backbone}` ({wm_desc}), {params / 1e6:.2f}M parameters; reward head {rparams / 1e6:.2f}M parameters
- observation: uint8 RGB {tuple(c.obs_shape)}; context: {c.context_frames} frames; sampling: {c.sampling_steps} Euler steps
- actions (Discrete({c.num_actions})): {meanings}
- bundled start clips: {self.start_frames.shape[0]} real clips of {c.context_frames} frames
- stepping speed: {c.metrics.get("transitions_per_second", "not measured; run `python bench/dream_env.py --simulator <folder>`")}

## Training

{training}

## Fidelity ({fidelity})

{metrics}

## Use

```python
import gymnasium as gym
import dws_gym

envs = gym.make_vec("dws/Dream-v0", num_envs=64, simulator="<this folder or repo id>")
obs, info = envs.reset(seed=0)
obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
```

or the step protocol directly:

```python
from dws_gym.simulator import Simulator

sim = Simulator.from_pretrained("<this folder or repo id>")
state = sim.init_state(sim.start_frames[:8], sim.start_actions[:8])
frame, reward, terminated, state = sim.step(state, [0] * 8)
```

## Limitations

- Open-loop errors compound: long dreams drift away from the real game; compare against the real env.
- Rewards and terminations are predicted by a separate head and inherit its errors on rare events.
- Generated at {c.obs_shape[0]}×{c.obs_shape[1]}; only what the training data covered is simulated faithfully.
{known_limits}"""


def _first(mask: torch.Tensor, k: int = 8) -> list[int]:
    """Flat indices of the first ``k`` True entries (error messages stay short at thousands of envs)."""
    return torch.nonzero(mask.reshape(-1)).reshape(-1)[:k].tolist()


def resolve_simulator_path(
    path_or_repo_id: str | os.PathLike, *, revision: str | None = None, local_files_only: bool | None = None
) -> Path:
    """A local folder as is; otherwise a Hub repo id downloaded (or found in the cache) with huggingface_hub."""
    path = Path(path_or_repo_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is a file; a simulator is a folder (see Simulator.save_pretrained).")
        return path
    repo_id = str(path_or_repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"No simulator folder at {repo_id!r}, and it is not a Hub repo id of the form 'user/name'."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                local_files_only=bool(local_files_only) or offline,
            )
        )
    except (HfHubHTTPError, OSError, ValueError) as e:
        how = (
            f"On a machine with access run `huggingface-cli download {repo_id} --local-dir <folder>` (or "
            f"`hf download`), copy the folder here and pass its path instead of the repo id."
        )
        reason = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else f"{type(e).__name__}: {e}"
        raise FileNotFoundError(
            f"No local folder {repo_id!r}, and simulator {repo_id!r} could not be had from the Hugging Face Hub "
            f"({reason}). If you meant a folder, check the path. {how}"
        ) from e
