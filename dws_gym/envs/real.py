"""Real Atari (ale-py) and Procgen vector environments in the exact frame format of the dream env.

Both emit uint8 RGB frames of shape (64, 64, 3) per env (``(k, 64, 64, 3)`` with ``frame_stack=k``), take
``Discrete(n)`` actions and expose ``action_meanings``, so a policy trained in a dream runs here unchanged.

ALE is pinned to the Atari-100k protocol: frameskip 4 with max-pooling of the last two frames, no sticky
actions by default, the game's minimal action set, up to 30 no-op starts, raw (unclipped) rewards, a ``life_lost``
flag in ``info`` and termination at game over. Procgen runs through ``procgen.ProcgenGym3Env`` (gym3), whose episodes
reset inside ``step``: its 1000-step timeout is reported as truncation (counted here), and the final frame of a
finished episode is not observable, so Procgen envs autoreset in ``SAME_STEP`` mode with
``info["final_frame_known"] = False``.

Usage::

    envs = make_real_env("ALE/Breakout-v5", num_envs=8, seed=0)
    envs = make_real_env("procgen/coinrun", num_envs=64, num_levels=200, distribution_mode="easy")
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode, VectorEnv

from dws_gym.envs.frame_stack import FrameStackVector

FRAME_SHAPE: tuple[int, int, int] = (64, 64, 3)
"""Per-env observation shape shared by real and dream environments (docs/ARCHITECTURE.md, 'Observation format')."""

PROCGEN_GAMES: tuple[str, ...] = (
    "bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
    "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot",
)
PROCGEN_TIMEOUT = 1000
"""Procgen ends every episode after this many steps; we report that end as truncation."""

_ALE_ID = re.compile(r"^(?:ALE/)?(?P<game>[A-Za-z0-9]+)-v5$")
_PROCGEN_ID = re.compile(r"^procgen[/:-](?P<game>[a-z]+)(?:-v\d+)?$")


def _ale_rom_name(game: str) -> str:
    """'MontezumaRevenge' -> 'montezuma_revenge' (ale-py's ROM naming)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


def supported_env_ids() -> list[str]:
    """Every real env id :func:`make_real_env` accepts (ALE games with a shipped ROM, then Procgen games)."""
    from ale_py import roms

    ale_games = sorted(
        "".join(part.capitalize() for part in rom.split("_")) for rom in roms.get_all_rom_ids()
    )
    return [f"ALE/{g}-v5" for g in ale_games] + [f"procgen/{g}" for g in PROCGEN_GAMES]


def parse_env_id(env_id: str) -> tuple[str, str]:
    """Split a real env id into ``(family, game)`` with family ``"ale"`` or ``"procgen"``.

    Raises:
        ValueError: for an id that is neither ``ALE/<Game>-v5`` with a known ROM nor ``procgen/<game>``.
    """
    m = _PROCGEN_ID.match(env_id)
    if m:
        game = m.group("game")
        if game not in PROCGEN_GAMES:
            raise ValueError(
                f"Unknown Procgen game {game!r} in env id {env_id!r}. Supported: "
                + ", ".join(f"procgen/{g}" for g in PROCGEN_GAMES)
            )
        return "procgen", game
    m = _ALE_ID.match(env_id)
    if m:
        from ale_py import roms

        rom = _ale_rom_name(m.group("game"))
        if rom in roms.get_all_rom_ids():
            return "ale", rom
    examples = "ALE/Breakout-v5, ALE/BattleZone-v5, procgen/coinrun, procgen/ninja"
    raise ValueError(
        f"Unsupported real env id {env_id!r}. Use 'ALE/<Game>-v5' for an Atari game with a ROM shipped by ale-py "
        f"or 'procgen/<game>' for a Procgen game (e.g. {examples}). "
        "dws_gym.envs.real.supported_env_ids() lists every id."
    )


def _check_actions(actions: Any, num_envs: int, n: int) -> np.ndarray:
    """Validate a batch of discrete actions; return them as int32 (what both emulators take)."""
    a = np.asarray(actions)
    if a.shape != (num_envs,):
        raise ValueError(f"Expected actions of shape ({num_envs},) (one per env), got {a.shape}.")
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"Actions must be integers in [0, {n}), got dtype {a.dtype} with values {a!r}.")
    if a.min() < 0 or a.max() >= n:
        raise ValueError(f"Actions must lie in [0, {n}) for this env, got {a!r}.")
    return a.astype(np.int32)


def _own_metadata_atari_vector_env() -> type:
    """ale-py's AtariVectorEnv with a class-level metadata dict of its own.

    Its ``__init__`` writes ``autoreset_mode`` into ``self.metadata``, which is gymnasium's ``VectorEnv.metadata``
    shared by every vector env in the process; this subclass gives those writes their own dict.
    """
    from ale_py.vector_env import AtariVectorEnv

    return type("_AtariVectorEnv", (AtariVectorEnv,), {"metadata": {}})


class _RealVectorEnv(VectorEnv):
    """What both real families share: the dream-format spaces, action meanings, per-instance metadata, render."""

    def _setup(self, game: str, num_envs: int, mode: AutoresetMode, action_meanings: list[str]) -> None:
        self.game = game
        self.num_envs = num_envs
        self.autoreset_mode = mode
        # Each instance keeps its own metadata dict (ale-py writes into the shared VectorEnv class dict).
        self.metadata = {"autoreset_mode": mode, "render_modes": ["rgb_array"], "render_fps": 15}
        self.render_mode = "rgb_array"
        self.action_meanings = list(action_meanings)
        self.single_observation_space = Box(0, 255, FRAME_SHAPE, np.uint8)
        self.single_action_space = Discrete(len(self.action_meanings))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._last_obs: np.ndarray | None = None

    def get_action_meanings(self) -> list[str]:
        """Names of the discrete actions in action-index order (e.g. ``['NOOP', 'FIRE', 'RIGHT', 'LEFT']``)."""
        return list(self.action_meanings)

    def render(self) -> np.ndarray | None:
        """The current frame of every env, (N, 64, 64, 3) uint8."""
        return None if self._last_obs is None else self._last_obs.copy()


class AtariRealVectorEnv(_RealVectorEnv):
    """A batch of ALE games stepped by ale-py's threaded vector interface, emitting (N, 64, 64, 3) uint8 RGB.

    Args:
        game: ale-py ROM name (e.g. ``"breakout"``) or an env id such as ``"ALE/Breakout-v5"``.
        num_envs: number of emulators.
        repeat_action_probability: sticky-action probability (0.0 = the Atari-100k protocol).
        noop_max: up to this many no-ops at each reset.
        frameskip: emulator frames per agent step (the last two are max-pooled).
        autoreset_mode: ``NEXT_STEP`` (default) or ``SAME_STEP``, as in gymnasium.
        max_num_frames_per_episode: emulator-frame cap, reported as truncation.
        num_threads: emulator threads (0 = ale-py's choice).
        full_action_space: use all 18 actions instead of the game's minimal set.
        use_fire_reset: press FIRE after reset in games that need it (off by default so data keeps real FIRE steps).

    ``info`` carries ``life_lost`` (bool per env: the step lost a life, game over included), ``lives`` and ale-py's
    frame counters.
    """

    def __init__(
        self,
        game: str,
        num_envs: int = 1,
        *,
        repeat_action_probability: float = 0.0,
        noop_max: int = 30,
        frameskip: int = 4,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_num_frames_per_episode: int = 108_000,
        num_threads: int = 0,
        full_action_space: bool = False,
        use_fire_reset: bool = False,
    ) -> None:
        if "/" in game or game.endswith("-v5"):
            family, game = parse_env_id(game)
            if family != "ale":
                raise ValueError(f"{game!r} is not an ALE game; use ProcgenRealVectorEnv or make_real_env.")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        mode = AutoresetMode(autoreset_mode)
        if mode is AutoresetMode.DISABLED:
            raise ValueError("AtariRealVectorEnv supports autoreset_mode NEXT_STEP or SAME_STEP, not DISABLED.")
        self._ale = _own_metadata_atari_vector_env()(
            game,
            num_envs,
            num_threads=num_threads,
            max_num_frames_per_episode=max_num_frames_per_episode,
            repeat_action_probability=repeat_action_probability,
            full_action_space=full_action_space,
            autoreset_mode=mode,
            img_height=FRAME_SHAPE[0],
            img_width=FRAME_SHAPE[1],
            grayscale=False,
            stack_num=1,
            frameskip=frameskip,
            maxpool=True,
            noop_max=noop_max,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            use_fire_reset=use_fire_reset,
        )
        self._setup(game, num_envs, mode, [a.name for a in self._ale.ale.get_action_set()])
        self._lives = np.zeros(num_envs, dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset every env; ``seed`` seeds the whole batch reproducibly."""
        super().reset(seed=seed)
        obs, info = self._ale.reset(seed=seed, options=options)
        self._lives = np.asarray(info["lives"], dtype=np.int64).copy()
        info = dict(info)
        info["life_lost"] = np.zeros(self.num_envs, dtype=bool)
        self._last_obs = obs[:, 0]
        return self._last_obs, info

    def step(self, actions: Any):
        """Step every env with one discrete action each: returns ``(obs, reward, terminated, truncated, info)``."""
        if self._last_obs is None:
            raise RuntimeError("Call reset() before step().")
        a = _check_actions(actions, self.num_envs, self.single_action_space.n)
        obs, reward, terminated, truncated, info = self._ale.step(a)
        lives = np.asarray(info["lives"], dtype=np.int64)
        # A reset (NEXT_STEP's reset step, or SAME_STEP's new episode) raises the count: only a drop is a loss.
        life_lost = lives < self._lives
        if self.autoreset_mode is AutoresetMode.SAME_STEP:
            done = terminated | truncated
            life_lost = np.where(done, terminated, life_lost)
        self._lives = lives.copy()
        info = dict(info)
        info["life_lost"] = life_lost
        self._last_obs = obs[:, 0]
        return self._last_obs, reward.astype(np.float32), terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self._ale.close()


class ProcgenRealVectorEnv(_RealVectorEnv):
    """A batch of Procgen games (``procgen.ProcgenGym3Env``) as a gymnasium VectorEnv emitting (N, 64, 64, 3) uint8.

    Args:
        game: Procgen game name (e.g. ``"coinrun"``) or ``"procgen/coinrun"``.
        num_envs: number of games stepped together.
        num_levels: number of distinct levels (0 = unlimited).
        start_level: first level seed.
        distribution_mode: ``"easy"``, ``"hard"``, ``"extreme"``, ``"memory"`` or ``"exploration"``.
        autoreset_mode: only ``SAME_STEP``: gym3 resets inside ``step`` and the final frame is lost.
        **procgen_kwargs: passed to ``ProcgenGym3Env`` (e.g. ``use_backgrounds``, ``paint_vel_info``).

    A step that ends an episode returns the next episode's first frame, ``terminated`` (death or level done) or
    ``truncated`` (the 1000-step timeout), and ``info["final_frame_known"] = False``. ``info`` also has
    ``level_seed``, ``prev_level_complete`` and ``life_lost`` (equal to ``terminated``: Procgen has one life).
    """

    def __init__(
        self,
        game: str,
        num_envs: int = 1,
        *,
        num_levels: int = 0,
        start_level: int = 0,
        distribution_mode: str = "hard",
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        **procgen_kwargs: Any,
    ) -> None:
        if "/" in game or ":" in game:
            family, game = parse_env_id(game)
            if family != "procgen":
                raise ValueError(f"{game!r} is not a Procgen game; use AtariRealVectorEnv or make_real_env.")
        if game not in PROCGEN_GAMES:
            raise ValueError(f"Unknown Procgen game {game!r}; supported: {', '.join(PROCGEN_GAMES)}.")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        mode = AutoresetMode(autoreset_mode)
        if mode is not AutoresetMode.SAME_STEP:
            raise ValueError(
                f"Procgen envs support only autoreset_mode=SAME_STEP (got {mode.value}): gym3 resets a finished "
                "episode inside step() and its final frame cannot be observed. Pass autoreset_mode='SameStep' or None."
            )
        try:
            from procgen import ProcgenGym3Env
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise ImportError(
                "Procgen environments need the 'procgen' extra: pip install 'dws-gym[procgen]' "
                "(procgen-mirror ships Python 3.11 wheels)."
            ) from e
        self._make = lambda seed: ProcgenGym3Env(
            num=num_envs,
            env_name=game,
            num_levels=num_levels,
            start_level=start_level,
            distribution_mode=distribution_mode,
            rand_seed=seed,
            **procgen_kwargs,
        )
        self._env = None
        self._setup(game, num_envs, mode, ["+".join(combo) if combo else "NOOP" for combo in _procgen_combos()])
        self._steps = np.zeros(num_envs, dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start fresh episodes in every env. gym3 cannot reset, so the batch is rebuilt with a seed derived from
        ``seed`` (or from this env's RNG), which makes seeded runs reproducible."""
        super().reset(seed=seed)
        rand_seed = int(self.np_random.integers(0, 2**31 - 1))
        self._env = self._make(rand_seed)
        _, obs, _ = self._env.observe()
        self._steps[:] = 0
        info = self._info(np.zeros(self.num_envs, dtype=bool))
        self._last_obs = obs["rgb"].copy()
        return self._last_obs, info

    def _info(self, done: np.ndarray) -> dict[str, Any]:
        raw = self._env.get_info()
        return {
            "level_seed": np.array([d.get("level_seed", -1) for d in raw], dtype=np.int64),
            "prev_level_complete": np.array([bool(d.get("prev_level_complete", 0)) for d in raw]),
            # gymnasium's vector-info convention: a value per env plus a "_key" mask of the envs it applies to.
            "final_frame_known": np.zeros(self.num_envs, dtype=bool),
            "_final_frame_known": done.copy(),
        }

    def step(self, actions: Any):
        """Step every env with one discrete action each: returns ``(obs, reward, terminated, truncated, info)``."""
        if self._env is None:
            raise RuntimeError("Call reset() before step().")
        a = _check_actions(actions, self.num_envs, self.single_action_space.n)
        self._env.act(a)
        reward, obs, first = self._env.observe()
        self._steps += 1
        done = np.asarray(first, dtype=bool)
        truncated = done & (self._steps >= PROCGEN_TIMEOUT)
        terminated = done & ~truncated
        self._steps[done] = 0
        info = self._info(done)
        info["life_lost"] = terminated.copy()
        self._last_obs = obs["rgb"].copy()
        return self._last_obs, np.asarray(reward, dtype=np.float32), terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self._env = None


def _procgen_combos() -> list[tuple[str, ...]]:
    """Procgen's action combos, read from the installed package so indices always match the emulator."""
    try:
        from procgen.env import BaseProcgenEnv
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError("Procgen environments need the 'procgen' extra: pip install 'dws-gym[procgen]'.") from e
    return [tuple(c) for c in BaseProcgenEnv.get_combos(None)]


def make_real_env(
    env_id: str,
    num_envs: int = 1,
    *,
    seed: int | None = None,
    frame_stack: int = 1,
    autoreset_mode: AutoresetMode | str | None = None,
    **kwargs: Any,
) -> VectorEnv:
    """Make a real Atari or Procgen vector env in the dream env's format.

    Args:
        env_id: ``"ALE/<Game>-v5"`` (any game whose ROM ale-py ships) or ``"procgen/<game>"``.
        num_envs: number of envs stepped as one batch.
        seed: if given, the env is reset once with it so the first ``reset()`` without a seed is reproducible too.
        frame_stack: stack the last k frames: observations become (N, k, 64, 64, 3).
        autoreset_mode: ``None`` picks the env's natural mode (ALE: NEXT_STEP, Procgen: SAME_STEP).
        **kwargs: passed to :class:`AtariRealVectorEnv` or :class:`ProcgenRealVectorEnv`.

    Raises:
        ValueError: unknown id (the message lists what is supported) or bad options.
    """
    family, game = parse_env_id(env_id)
    if family == "ale":
        mode = AutoresetMode.NEXT_STEP if autoreset_mode is None else autoreset_mode
        env: VectorEnv = AtariRealVectorEnv(game, num_envs, autoreset_mode=mode, **kwargs)
    else:
        mode = AutoresetMode.SAME_STEP if autoreset_mode is None else autoreset_mode
        env = ProcgenRealVectorEnv(game, num_envs, autoreset_mode=mode, **kwargs)
    env.env_id = env_id  # type: ignore[attr-defined]
    if frame_stack < 1:
        raise ValueError(f"frame_stack must be >= 1, got {frame_stack}.")
    if frame_stack > 1:
        env = FrameStackVector(env, frame_stack)
    if seed is not None:
        env.reset(seed=seed)
    return env
