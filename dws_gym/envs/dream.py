"""The dream environment: a DWS simulator served as a gymnasium VectorEnv (docs/ARCHITECTURE.md, 'Dream env').

:class:`DreamVectorEnv` steps ``num_envs`` dreams as ONE batch through the simulator's step protocol: every
``step`` is one batched ``simulator.step`` call (only the envs that actually advance). Observations are uint8
``(N, 64, 64, 3)`` frames, the real envs' format (``(N, k, 64, 64, 3)`` with ``frame_stack=k``); actions are
``Discrete(n)``. Episodes start from windows drawn from a start-state sampler (:mod:`dws_gym.imagination`), reported
as ``info["start_id"]``; they end when the reward head predicts termination or after ``max_episode_steps``.

:class:`DreamEnv` is the single-env face of the same machinery (what ``gym.make`` returns)::

    import gymnasium as gym
    import dws_gym

    envs = gym.make_vec("dws/Dream-v0", num_envs=64, simulator="runs/breakout/simulator", device="auto")
    obs, info = envs.reset(seed=0)                    # obs uint8 (64, 64, 64, 3); info["start_id"] int64 (64,)
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())

The simulator steps in bf16 where the hardware has native bf16 (``dtype="auto"``, the default; ``dtype="fp32"`` for
float32 everywhere); ``envs.metadata["precision"]`` says which and why. On a CPU the env also keeps freed memory in the
process for the next step's buffers (:mod:`dws_gym.cpu_allocator`, process-wide; ``keep_freed_memory=False`` or
``DWS_GYM_MALLOC=default`` leave malloc alone); ``envs.metadata["cpu_allocator"]`` says what was set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode, VectorEnv

from dws_gym import cpu_allocator
from dws_gym.envs.registration import check_simulator_matches, default_simulator
from dws_gym.hardware import resolve_precision
from dws_gym.imagination import StartStateSampler, as_start_sampler, check_start_batch
from dws_gym.simulator import Simulator, SimState

__all__ = ["DreamEnv", "DreamVectorEnv", "resolve_device"]

RENDER_FPS = 15
logger = logging.getLogger(__name__)
_RESET_OPTIONS = ("reset_mask", "start_states")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is ``cuda`` when a GPU is visible, else ``cpu``; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:<i>' or a torch.device, got {device!r}.") from e


def _autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    if isinstance(mode, AutoresetMode):
        return mode
    for m in AutoresetMode:
        if str(mode).replace("_", "").lower() in (m.value.lower(), m.name.replace("_", "").lower()):
            return m
    raise ValueError(
        f"autoreset_mode must be one of {[m.value for m in AutoresetMode]} (or an AutoresetMode), got {mode!r}."
    )


def _derive_torch_seed(seed: int) -> int:
    # A stream of its own: the same integer seeds numpy (starts) and torch (dreams) without sharing draws.
    return int(np.random.SeedSequence([int(seed), 0x5EED]).generate_state(1, np.uint64)[0]) >> 1


class DreamVectorEnv(VectorEnv):
    """``num_envs`` dreams of one DWS simulator, stepped as one batch.

    Args:
        simulator: A :class:`~dws_gym.simulator.Simulator`, a simulator folder, or a Hugging Face Hub repo id.
            ``None`` takes the simulator shipped for ``env_id`` (named games only).
        num_envs: Number of dreams stepped together.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ... A loaded simulator is moved
            there; a :class:`Simulator` object passed with ``"auto"`` stays where it is.
        dtype: Stepping precision: ``"auto"`` (default: bf16 where the device has native bf16, i.e. CUDA or a CPU
            with AMX / AVX512-BF16, else fp32), ``"bf16"`` or ``"fp32"``. Applied with
            :meth:`Simulator.set_precision` (a :class:`Simulator` object passed in is switched too);
            ``metadata["precision"]`` holds the reason, also logged at INFO level.
        sampling_steps: Euler steps per env step (``None``: the simulator's default).
        start_states: Where episodes start: ``None`` (uniform over the simulator's bundled real start clips),
            a ``(frames, actions)`` pair of arrays (uniform over them), or a sampler with ``sample(n, rng)`` and
            ``update_priorities(ids, values)`` (see :mod:`dws_gym.imagination`).
        autoreset_mode: ``"NextStep"`` (default), ``"SameStep"`` or ``"Disabled"`` (then reset finished envs with
            ``reset(options={"reset_mask": mask})``), as in gymnasium.
        max_episode_steps: Per-env step cap, reported as ``truncated`` (``None``: no cap).
        frame_stack: Observe the last ``k`` frames, ``(N, k, H, W, 3)`` oldest first; a new episode starts with its
            first frame repeated (the same rule as the real envs' ``frame_stack``).
        output: ``"numpy"`` (default) or ``"torch"``: observations, rewards and flags as tensors on the simulator's
            device (no host round trip). ``info`` stays numpy.
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` returns a tuple of ``(H, W, 3)`` frames, one per env).
        env_id: The registered id this env serves; for a named game the simulator must imitate that game.
        sample_reward: Sample rewards from the head's distribution instead of its predicted value.
        sample_termination: Bernoulli termination instead of ``probability > 0.5``.
        compile: ``torch.compile`` the simulator's step (:meth:`Simulator.compile`: the world model's sampling and
            the reward head): 1.2-1.4x the transitions/s of the eager bf16 step on AMX and AVX512-BF16 CPUs
            (measured), after a first step that compiles (a minute or so on a CPU). ``metadata["compiled"]`` says
            what runs. A dict is passed on as ``torch.compile`` keyword arguments, e.g. ``{"options": {"freezing":
            True, "cpp_wrapper": True}}``: inductor's weight freezing and C++ wrapper gave 1.01-1.07x the plain
            compiled step of the Breakout default on two AMX cores; frozen weights are constants of the compiled
            code, so compile again after changing any.
        rolling_cache: Keep the reward head's tokens of each env's context frames across steps
            (:attr:`SimState.head_tokens <dws_gym.simulator.SimState>`), so a step embeds only its new frame;
            ``False`` embeds all of them every step (the same results up to float rounding).
        keep_freed_memory: On a CPU, have glibc's malloc keep freed memory for the next step's buffers
            (:func:`dws_gym.cpu_allocator.keep_freed_memory`: 1.12-1.23x the step of the Breakout default, measured;
            process-wide and one-way, it also keeps the rest of the program's freed memory resident, and
            ``DWS_GYM_MALLOC=default`` in the environment vetoes it). ``False`` leaves malloc as it is unless an
            earlier call set it. ``metadata["cpu_allocator"]`` says which.

    Randomness: ``reset(seed=s)`` seeds ``self.np_random`` (handed to the sampler on every call) and one
    ``torch.Generator`` on the simulator's device (all the simulator's noise), so seeded runs repeat exactly on the
    same kind of device (CPU and CUDA draw different streams). Under NEXT_STEP, an env that
    ended on the previous step is restarted: its action is ignored, its reward is 0, both flags are False, and it
    draws no simulator noise (so a 1-env vector env and ``gym.make`` stay in lockstep).

    ``info["start_id"]`` (int64 (N,), with the mask ``info["_start_id"]``) names the start window of every env
    that (re)started on this reset / step: the sampler's id, or -1 for clips passed in ``reset`` options.
    Under SAME_STEP, ``info["final_obs"]`` (object array, mask ``"_final_obs"``) holds the last observation of
    the episodes that just ended.
    """

    def __init__(
        self,
        simulator: Simulator | str | None = None,
        num_envs: int = 1,
        *,
        device: str | torch.device = "auto",
        dtype: str = "auto",
        sampling_steps: int | None = None,
        start_states: Any = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
        frame_stack: int = 1,
        output: str = "numpy",
        render_mode: str | None = None,
        env_id: str | None = None,
        sample_reward: bool = False,
        sample_termination: bool = False,
        compile: bool | Mapping[str, Any] = False,
        rolling_cache: bool = True,
        keep_freed_memory: bool = True,
    ) -> None:
        resolve_precision(dtype, "cpu")  # a bad dtype fails before a simulator is loaded
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}.")
        if int(frame_stack) != frame_stack or frame_stack < 1:
            raise ValueError(f"frame_stack must be an integer >= 1, got {frame_stack!r}.")
        if max_episode_steps is not None and (int(max_episode_steps) != max_episode_steps or max_episode_steps < 1):
            raise ValueError(f"max_episode_steps must be None or an integer >= 1, got {max_episode_steps!r}.")
        if sampling_steps is not None and (int(sampling_steps) != sampling_steps or sampling_steps < 1):
            raise ValueError(f"sampling_steps must be None or an integer >= 1, got {sampling_steps!r}.")
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}.")
        if not isinstance(compile, (bool, Mapping)):
            raise ValueError(f"compile must be True, False or a dict of torch.compile keyword arguments (e.g. "
                             f"{{'options': {{'freezing': True}}}}), got {type(compile).__name__}.")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array' (frames only), got {render_mode!r}.")
        mode = _autoreset_mode(autoreset_mode)

        if simulator is None:
            simulator = default_simulator(env_id)
        if isinstance(simulator, Simulator):
            if not (isinstance(device, str) and device == "auto"):
                simulator.to(resolve_device(device))
        elif isinstance(simulator, (str, bytes)) or hasattr(simulator, "__fspath__"):
            simulator = Simulator.from_pretrained(simulator, device=resolve_device(device))
        else:
            raise ValueError(
                f"simulator must be a Simulator, a simulator folder or a Hub repo id 'user/repo', got "
                f"{type(simulator).__name__}."
            )
        check_simulator_matches(env_id, simulator.config.env_id, simulator.num_actions)
        precision = simulator.set_precision(dtype)
        logger.info("%s on %s: %s", env_id or "dream env", simulator.device, precision.reason)
        # Process-wide: without it a CPU step page-faults in its buffers on every call (dws_gym.cpu_allocator).
        allocator = None
        if simulator.device.type == "cpu":
            if keep_freed_memory:
                allocator = cpu_allocator.keep_freed_memory()
            else:
                earlier = cpu_allocator.outcome()
                allocator = ("malloc left as it is (keep_freed_memory=False)" if earlier is None
                             else f"{earlier} (set earlier in this process)")
            logger.info("%s", allocator)
        if compile:
            simulator.compile(**(dict(compile) if isinstance(compile, Mapping) else {}))

        self.simulator = simulator
        self.env_id = env_id
        self.num_envs = int(num_envs)
        self.autoreset_mode = mode
        self.sampling_steps = sampling_steps
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.frame_stack = int(frame_stack)
        self.output = output
        self.render_mode = render_mode
        self.sample_reward = bool(sample_reward)
        self.sample_termination = bool(sample_termination)
        self.rolling_cache = bool(rolling_cache)
        self.start_sampler: StartStateSampler = as_start_sampler(start_states, simulator)
        # Each instance owns its metadata (the VectorEnv base-class dict is shared process-wide).
        self.metadata = {"autoreset_mode": mode, "render_modes": ["rgb_array"], "render_fps": RENDER_FPS,
                         "precision": precision.reason, "compiled": simulator.compiled, "cpu_allocator": allocator}

        self.action_meanings: list[str] = list(simulator.config.action_meanings)
        h, w, c = simulator.config.obs_shape
        frame_shape = (h, w, c) if self.frame_stack == 1 else (self.frame_stack, h, w, c)
        self.single_observation_space = Box(0, 255, frame_shape, np.uint8)
        self.single_action_space = Discrete(simulator.num_actions)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)

        self._state: SimState | None = None
        self._stack: torch.Tensor | None = None  # (N, k, H, W, 3) uint8 on the simulator's device
        self._generator: torch.Generator | None = None
        self._elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """Where the simulator runs (and where ``output="torch"`` tensors live)."""
        return self.simulator.device

    def get_action_meanings(self) -> list[str]:
        """Names of the discrete actions, in action-index order."""
        return list(self.action_meanings)

    def update_priorities(self, ids: Any, values: Any) -> None:
        """Hand scores of start windows (``ids`` from ``info["start_id"]``, ``values`` float) to the sampler."""
        ids = np.asarray(ids.cpu() if torch.is_tensor(ids) else ids)
        values = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values)
        if ids.ndim != 1 or values.shape != ids.shape:
            raise ValueError(f"ids and values must be 1-D of equal length, got shapes {ids.shape} and {values.shape}.")
        keep = ids >= 0  # -1: clips passed in reset options, not the sampler's
        if keep.any():
            self.start_sampler.update_priorities(ids[keep], values[keep])

    # ------------------------------------------------------------------------------------------- helpers
    def _draw_starts(self, count: int, given: Any) -> tuple[Any, Any, np.ndarray]:
        """``count`` start windows: from ``given`` clips (ids -1) or from the sampler with ``self.np_random``."""
        k, shape = self.simulator.context_frames, tuple(self.simulator.config.obs_shape)
        if given is not None:
            frames, actions = given
            ids = np.full(count, -1, dtype=np.int64)
            return check_start_batch((frames, actions, ids), count, k, shape)
        batch = self.start_sampler.sample(count, self.np_random)
        return check_start_batch(batch, count, k, shape)

    def _restart(self, mask: np.ndarray, given: Any = None) -> np.ndarray:
        """Re-seed the envs where ``mask`` holds from fresh start windows; return the start ids (N,), -1 elsewhere."""
        ids = np.full(self.num_envs, -1, dtype=np.int64)
        count = int(mask.sum())
        if count == 0:
            return ids
        if given is not None and len(given[0]) == self.num_envs and count != self.num_envs:
            # one clip per env given: keep the masked ones
            given = tuple(x[torch.as_tensor(mask)] if torch.is_tensor(x) else np.asarray(x)[mask] for x in given)
        frames, actions, new_ids = self._draw_starts(count, given)
        if self._state is None:
            self._state = self.simulator.init_state(frames, actions, cache=self.rolling_cache)
        else:
            self._state = self.simulator.reset_where(self._state, mask, frames, actions)
        ids[mask] = new_ids
        m = torch.as_tensor(mask, device=self.device)
        last = self._state.frames[m, -1]
        if self._stack is None:
            self._stack = last[:, None].repeat(1, self.frame_stack, 1, 1, 1)
        else:
            self._stack[m] = last[:, None].expand(-1, self.frame_stack, -1, -1, -1)
        self._elapsed[mask] = 0
        self._needs_reset[mask] = False
        return ids

    def _check_actions(self, actions: Any) -> torch.Tensor:
        return self.simulator.check_actions(actions, (self.num_envs,), "actions")

    def _observation(self) -> Any:
        obs = self._stack[:, 0] if self.frame_stack == 1 else self._stack
        # Always a copy: on the CPU .numpy() would share memory with the stack that later steps overwrite.
        return obs.clone() if self.output == "torch" else obs.to("cpu", copy=True).numpy()

    # ------------------------------------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start new episodes.

        Args:
            seed: Seeds the sampler's numpy rng and the simulator's torch generator.
            options: ``{"reset_mask": bool (N,)}`` restarts only those envs (after a first full reset);
                ``{"start_states": ...}`` overrides the starts: a ``(frames, actions)`` pair with one clip per
                restarted env (or per env) is used once (start ids -1); a sampler replaces the env's sampler.

        Returns:
            ``(obs, info)`` with obs uint8 ``(N, H, W, 3)`` (``(N, k, H, W, 3)`` stacked) and ``info["start_id"]``.
        """
        super().reset(seed=seed)
        # The generator lives on the simulator's device: sampling noise is drawn where it is used (a CPU generator
        # would copy every Euler step's noise to the GPU). Seeded runs repeat exactly on the same device type.
        if seed is not None:
            self._generator = torch.Generator(device=self.device).manual_seed(_derive_torch_seed(seed))
        elif self._generator is None:
            seed0 = int(self.np_random.integers(0, 2**62))
            self._generator = torch.Generator(device=self.device).manual_seed(seed0)
        options = dict(options or {})
        unknown = set(options) - set(_RESET_OPTIONS)
        if unknown:
            raise ValueError(f"Unknown reset options {sorted(unknown)}; DreamVectorEnv accepts {list(_RESET_OPTIONS)}.")

        mask = options.get("reset_mask")
        if mask is None:
            mask = np.ones(self.num_envs, dtype=bool)
        else:
            mask = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask)
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must be bool ({self.num_envs},), got {mask.dtype} {mask.shape}.")
            if self._state is None and not mask.all():
                raise ValueError("The first reset must reset every env: call reset() without reset_mask first.")

        given = None
        starts = options.get("start_states")
        if starts is not None:
            if isinstance(starts, (tuple, list)) and len(starts) == 2:
                given = tuple(starts)
                n = len(given[0])
                if n not in (int(mask.sum()), self.num_envs):
                    raise ValueError(
                        f"reset options start_states hold {n} clips; pass one per restarted env "
                        f"({int(mask.sum())}) or one per env ({self.num_envs})."
                    )
            else:
                self.start_sampler = as_start_sampler(starts, self.simulator)

        ids = self._restart(mask, given)
        info = {"start_id": ids, "_start_id": mask.copy()}
        return self._observation(), info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Advance every env by one action.

        Args:
            actions: ``(N,)`` integer action indices (numpy, list or torch).

        Returns:
            ``(obs, reward, terminated, truncated, info)``: obs uint8 (N, H, W, 3) (or stacked), reward float32 (N,),
            terminated / truncated bool (N,) — numpy, or torch on the device with ``output="torch"``.

        Raises:
            ValueError: before the first reset, or for actions of the wrong shape / dtype / range, or NaN.
        """
        if self._state is None:
            raise ValueError("step() called before reset(): call env.reset(seed=...) first.")
        a = self._check_actions(actions)
        n, dev = self.num_envs, self.device
        fresh = self._needs_reset.copy() if self.autoreset_mode is AutoresetMode.NEXT_STEP else np.zeros(n, bool)
        active = ~fresh
        reward = torch.zeros(n, dtype=torch.float32, device=dev)
        terminated_t = torch.zeros(n, dtype=torch.bool, device=dev)
        if active.any():
            idx = torch.as_tensor(np.flatnonzero(active), device=dev)
            every = bool(active.all())
            sub = self._state if every else self._state.rows(idx)
            frame, r, t, new = self.simulator.step(
                sub,
                a if every else a[idx],
                generator=self._generator,
                steps=self.sampling_steps,
                sample_reward=self.sample_reward,
                sample_termination=self.sample_termination,
                validate=False,  # checked once above, for every env
            )
            if every:
                self._state = new
                self._stack = torch.cat([self._stack[:, 1:], frame[:, None]], dim=1)
            else:
                self._state.set_rows(idx, new)
                self._stack[idx] = torch.cat([self._stack[idx, 1:], frame[:, None]], dim=1)
            reward[idx] = r.float()
            terminated_t[idx] = t.bool()
        self._elapsed[active] += 1
        terminated = terminated_t.cpu().numpy()
        truncated = np.zeros(n, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = active & (self._elapsed >= self.max_episode_steps)
        done = terminated | truncated

        info: dict[str, Any] = {}
        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            restart = fresh
            self._needs_reset = done.copy()
        elif self.autoreset_mode is AutoresetMode.SAME_STEP:
            restart = done
            if done.any():
                final = self._observation()
                info["final_obs"] = np.full(n, None, dtype=object)
                for i in np.flatnonzero(done):
                    info["final_obs"][i] = final[i]
                info["_final_obs"] = done.copy()
                # gymnasium's SAME_STEP convention also hands back the ended step's info; a dream's step info is
                # empty until the restart below, so the merged final info holds no keys, only its mask
                info["final_info"] = {}
                info["_final_info"] = done.copy()
        else:
            restart = np.zeros(n, dtype=bool)
        if restart.any():
            info["start_id"] = self._restart(restart)
            info["_start_id"] = restart.copy()

        obs = self._observation()
        if self.output == "torch":
            return (obs, reward, torch.as_tensor(terminated, device=dev), torch.as_tensor(truncated, device=dev),
                    info)
        return obs, reward.cpu().numpy(), terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        """With ``render_mode="rgb_array"``: the current frame of every env, a tuple of uint8 ``(H, W, 3)``."""
        if self.render_mode != "rgb_array" or self._stack is None:
            return None
        frames = self._stack[:, -1].to("cpu", copy=True).numpy()
        return tuple(frames)

    def close_extras(self, **kwargs: Any) -> None:
        self._state = None
        self._stack = None


class DreamEnv(gym.Env):
    """One dream as a plain ``gymnasium.Env`` (what ``gym.make("dws/...")`` returns).

    It wraps a 1-env :class:`DreamVectorEnv` and takes the same arguments (``num_envs`` aside). Observations are
    uint8 ``(H, W, 3)`` (``(k, H, W, 3)`` stacked), actions one integer. It never resets by itself: after an episode
    ends call ``reset()`` (``autoreset_mode`` is accepted only so one set of registered kwargs serves both entry
    points). ``gym.make`` adds the registered TimeLimit; ``max_episode_steps`` here is an extra cap of its own.
    ``info["start_id"]`` (int) is set on every reset.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS}

    def __init__(
        self,
        simulator: Simulator | str | None = None,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        **kwargs: Any,
    ) -> None:
        """Args: ``simulator`` and keyword arguments exactly as :class:`DreamVectorEnv` takes them (``device``,
        ``dtype``, ``sampling_steps``, ``start_states``, ``max_episode_steps``, ``frame_stack``, ``output``,
        ``render_mode``, ``env_id``, ``sample_reward``, ``sample_termination``, ``compile``, ``rolling_cache``,
        ``keep_freed_memory``), without ``num_envs``."""
        _autoreset_mode(autoreset_mode)  # validated for a clear error; a single env does not autoreset
        if "num_envs" in kwargs:
            raise TypeError("DreamEnv is one env: drop num_envs, or use DreamVectorEnv / gym.make_vec for several.")
        self._vec = DreamVectorEnv(simulator, 1, autoreset_mode=AutoresetMode.DISABLED, **kwargs)
        render_mode, env_id = kwargs.get("render_mode"), kwargs.get("env_id")
        self.metadata = {**type(self).metadata, "precision": self._vec.metadata["precision"],
                         "cpu_allocator": self._vec.metadata["cpu_allocator"]}
        self.render_mode = render_mode
        self.env_id = env_id
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self.action_meanings = self._vec.action_meanings

    @property
    def simulator(self) -> Simulator:
        return self._vec.simulator

    @property
    def start_sampler(self) -> StartStateSampler:
        return self._vec.start_sampler

    def get_action_meanings(self) -> list[str]:
        """Names of the discrete actions, in action-index order."""
        return self._vec.get_action_meanings()

    def update_priorities(self, ids: Any, values: Any) -> None:
        """Hand scores of start windows (from ``info["start_id"]``) to the sampler."""
        self._vec.update_priorities(np.atleast_1d(ids), np.atleast_1d(values))

    @staticmethod
    def _unbatch_info(info: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in info.items():
            if key.startswith("_") or not info.get(f"_{key}", np.ones(1, bool))[0]:
                continue
            v = value[0]
            out[key] = v.item() if isinstance(v, np.generic) else v
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start a new episode (``options``: ``{"start_states": sampler or (frames (1, K, H, W, 3), actions)}``)."""
        if options and "reset_mask" in options:
            raise ValueError("DreamEnv is a single env: reset_mask is a vector-env option.")
        obs, info = self._vec.reset(seed=seed, options=options)
        # One rng for both faces, so gymnasium's seeding checks see the generator that draws the starts.
        self._np_random = self._vec.np_random
        self._np_random_seed = self._vec.np_random_seed
        return obs[0], self._unbatch_info(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """One step: ``action`` is one integer in ``[0, n)``; returns ``(obs, reward, terminated, truncated, info)``."""
        a = action.reshape(1) if torch.is_tensor(action) else np.asarray(action)
        if tuple(a.shape) not in ((), (1,)):
            raise ValueError(f"DreamEnv takes one integer action, got shape {tuple(a.shape)}.")
        obs, reward, terminated, truncated, info = self._vec.step(a.reshape(1))
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._unbatch_info(info)

    def render(self) -> np.ndarray | None:
        """The current frame, uint8 ``(H, W, 3)``, with ``render_mode="rgb_array"``."""
        frames = self._vec.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        self._vec.close()
