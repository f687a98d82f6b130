"""Gymnasium ids of the dream environments, registered when ``dws_gym`` is imported (docs/ARCHITECTURE.md,
'Registered ids').

``dws/Breakout-v0``, ``dws/BattleZone-v0``, ``dws/CoinRun-v0`` and ``dws/Ninja-v0`` dream their game with the
simulator shipped in ``dws_gym/assets/simulators/<game>/`` (or any simulator passed as ``simulator=``: a folder or a
Hugging Face Hub repo id); ``dws/Dream-v0`` dreams whatever ``simulator=`` names. Every id has an ``entry_point``
(:class:`~dws_gym.envs.dream.DreamEnv`, one env) and a ``vector_entry_point``
(:class:`~dws_gym.envs.dream.DreamVectorEnv`, one batched simulator for all envs)::

    import gymnasium as gym
    import dws_gym

    env = gym.make("dws/Breakout-v0", simulator="runs/breakout/simulator")
    envs = gym.make_vec("dws/Dream-v0", num_envs=64, simulator="user/repo", device="cuda", dtype="auto")

``dtype`` is ``"auto"`` by default (bf16 where the hardware has native bf16), or ``"bf16"`` / ``"fp32"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

DEFAULT_MAX_EPISODE_STEPS = 1000
"""Registered episode cap of every dream id: ``gym.make`` adds a TimeLimit, ``gym.make_vec`` passes it to the env."""

SIMULATORS_DIR = Path(__file__).resolve().parent.parent / "assets" / "simulators"
"""Where shipped simulators live: one folder per game (``breakout``, ``battlezone``, ``coinrun``, ``ninja``), and
``breakout-fast`` (see :func:`shipped_simulator`)."""

DREAM_ENTRY_POINT = "dws_gym.envs.dream:DreamEnv"
DREAM_VECTOR_ENTRY_POINT = "dws_gym.envs.dream:DreamVectorEnv"
GENERIC_ID = "dws/Dream-v0"


@dataclass(frozen=True)
class DreamGame:
    """A registered dream id's game: the real env its simulator must imitate, and its action count."""

    real_env_id: str
    num_actions: int
    folder: str

    @property
    def default_simulator(self) -> Path:
        return SIMULATORS_DIR / self.folder


DREAM_GAMES: dict[str, DreamGame] = {
    "dws/Breakout-v0": DreamGame("ALE/Breakout-v5", 4, "breakout"),
    "dws/BattleZone-v0": DreamGame("ALE/BattleZone-v5", 18, "battlezone"),
    "dws/CoinRun-v0": DreamGame("procgen/coinrun", 15, "coinrun"),
    "dws/Ninja-v0": DreamGame("procgen/ninja", 15, "ninja"),
}


def dream_env_ids() -> list[str]:
    """Every dream id this package registers."""
    return [*DREAM_GAMES, GENERIC_ID]


def simulator_for_real_env(env_id: str) -> str:
    """The simulator folder shipped for a real env id (e.g. ``ALE/Breakout-v5`` -> ``dws/Breakout-v0``'s).

    Raises:
        ValueError: no registered game imitates ``env_id``.
        FileNotFoundError: the game is registered but its simulator does not ship (see :func:`default_simulator`).
    """
    for dream_id, game in DREAM_GAMES.items():
        if game.real_env_id == env_id:
            return default_simulator(dream_id)
    raise ValueError(f"No dws/* game imitates {env_id} (known: "
                     f"{sorted(g.real_env_id for g in DREAM_GAMES.values())}); pass a simulator folder or Hub id.")


def shipped_simulator(name: str) -> Path:
    """The folder of a simulator that ships inside the package, by name, to pass as ``simulator=``.

    Besides each game's default (``"breakout"``, ``"coinrun"``, ...), ``"breakout-fast"`` is a narrower student of the
    Breakout default: about 1.4x faster a step on CPUs with AMX, less faithful (its model card has both).

    Raises:
        FileNotFoundError: no shipped simulator has that name (the message lists those that do).
    """
    folder = SIMULATORS_DIR / name
    if not name or Path(name).name != name or not (folder / "simulator_config.json").is_file():
        shipped = sorted(p.name for p in SIMULATORS_DIR.iterdir() if (p / "simulator_config.json").is_file())
        raise FileNotFoundError(f"No simulator named {name!r} ships with dws-gym; the package has {shipped}. "
                                "Pass a simulator folder or a Hugging Face Hub repo id as simulator= instead.")
    return folder


def default_simulator(env_id: str | None) -> str:
    """The simulator a registered id uses when none is passed.

    Raises:
        ValueError: ``dws/Dream-v0`` (or no id) without ``simulator=``.
        FileNotFoundError: the game's simulator is not shipped; the message says how to train or download one.
    """
    game = DREAM_GAMES.get(env_id or "")
    if game is None:
        raise ValueError(
            f"{env_id or 'DreamVectorEnv'} needs simulator=: a simulator folder (Simulator.save_pretrained / "
            "train_world_model.py output), a Hugging Face Hub repo id 'user/repo', or a Simulator object. "
            f"Example: gym.make_vec({GENERIC_ID!r}, num_envs=8, simulator='runs/breakout/simulator')."
        )
    folder = game.default_simulator
    if not folder.is_dir():
        name = folder.name
        raise FileNotFoundError(
            f"No simulator ships for {env_id} (looked in {folder}). Train one with "
            f"`python train_world_model.py --env-id {game.real_env_id} --output-dir runs/{name}` and pass "
            f'simulator="runs/{name}/simulator", or download one with simulator="user/repo" '
            f"(a Hugging Face Hub repo id), e.g. gym.make({env_id!r}, simulator=\"runs/{name}/simulator\")."
        )
    return str(folder)


def check_simulator_matches(env_id: str | None, sim_env_id: str, num_actions: int) -> None:
    """Raise a ValueError when a simulator of ``sim_env_id`` with ``num_actions`` actions cannot serve ``env_id``."""
    game = DREAM_GAMES.get(env_id or "")
    if game is None:
        return
    if sim_env_id != game.real_env_id or num_actions != game.num_actions:
        raise ValueError(
            f"{env_id} dreams {game.real_env_id} with Discrete({game.num_actions}) actions, but the simulator given "
            f"imitates {sim_env_id} with Discrete({num_actions}). Pass a {game.real_env_id} simulator, or use "
            f"{GENERIC_ID!r} to run this simulator as is."
        )


def register_dream_envs() -> None:
    """Register every dream id with gymnasium. Safe to call again (ids already registered are left as they are)."""
    for env_id in dream_env_ids():
        if env_id in gym.registry:
            continue
        kwargs: dict[str, Any] = {
            "env_id": env_id,
            "simulator": None,
            "device": "auto",
            "dtype": "auto",
            "sampling_steps": None,
            "start_states": None,
            "autoreset_mode": "NextStep",
        }
        gym.register(
            id=env_id,
            entry_point=DREAM_ENTRY_POINT,
            vector_entry_point=DREAM_VECTOR_ENTRY_POINT,
            max_episode_steps=DEFAULT_MAX_EPISODE_STEPS,
            kwargs=kwargs,
        )
