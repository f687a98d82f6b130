"""How much a game's next frames depend on its actions: the ceiling of the held-out action-sensitivity test.

The held-out table scores a simulator's rollouts with the logged actions against rollouts with another clip's
actions (`action_sensitivity` = 1 - moving-region MSE with true actions / with shuffled ones). How high that can go
depends on the game: where one step's action barely changes the next frame, no model reaches a large margin at h = 1.
This script measures it in the real game. From N states reached by a uniformly random policy (the policy of the
random-policy datasets), the emulator state is saved and the game rolled H steps forward three times:

* under a random action sequence (the reference future);
* under the same sequence again: `again` is the game's own randomness (0 unless ALE's sticky actions are on);
* under another random sequence: `other` is how far the actions move the future, the error of a perfect model that
  was given the wrong actions.

Both are moving-region MSEs against the reference, on the held-out table's mask (pixels where the reference frame
changed by > 0.05 from the frame before). With ``--simulator`` each horizon also shows that simulator's held-out
moving-region error with the true actions (``e``, from its card) and an estimate of the sensitivity a model with that
error could show if it got every action's effect right: ``other / (e + other)``, taking its shuffled-action error to
be about ``e + other`` (errors independent of the action effect; a model that overreacts to actions can exceed it).
The held-out test asks for 0.2 at h = 1..5.

Frames are the dream format (64x64 RGB). ALE: ale-py's emulator directly, as the project's collector runs it
(the game's minimal action set, frameskip 4, the last two frames max-pooled, no sticky actions unless ``--sticky``),
resized by area averaging, which may differ from ale-py's vector resize by a grey level. Procgen: native 64x64
frames, easy mode, levels 0-199, state saved with gym3's ``get_state`` / ``set_state``.

    python bench/action_effect.py --env-id ALE/BattleZone-v5 --simulator runs/battlezone-unet/simulator
    python bench/action_effect.py --env-id ALE/BattleZone-v5 --sticky 0.25     # with ALE v5's sticky actions
    python bench/action_effect.py --env-id procgen/ninja --states 64 --write-results
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from dws_gym.envs.real import parse_env_id
from dws_gym.hardware import describe_machine
from dws_gym.metrics import moving_region_mse

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
FRAME = 64
FRAMESKIP = 4
STICKY = 0.0  # the collector's default (dws_gym.collect): the datasets have no sticky actions


@dataclass
class Args:
    env_id: str = "ALE/BattleZone-v5"
    """a real env id: ALE/<Game>-v5 or procgen/<game>"""
    states: int = 64
    """start states (each reached by 10-60 random steps from the last)"""
    horizon: int = 5
    """steps rolled forward from each state"""
    seed: int = 1
    sticky: float = STICKY
    """ALE only: the probability that the emulator repeats the previous action (0 as the datasets were collected;
    ALE v5's default is 0.25)"""
    simulator: str | None = None
    """a simulator folder whose held-out moving-region error (its card's metrics) gives the ceiling column"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: str = str(RESULTS)


class _AleGame:
    """One ALE game with saved / restored emulator states, frames in the dream format."""

    def __init__(self, game: str, seed: int, sticky: float = STICKY) -> None:
        import ale_py
        from ale_py import roms

        self.ale = ale_py.ALEInterface()
        self.ale.setInt("random_seed", seed)  # also seeds sticky actions; the saved states leave that RNG out
        self.ale.setFloat("repeat_action_probability", sticky)
        self.ale.loadROM(roms.get_rom_path(game))
        self.actions = list(self.ale.getMinimalActionSet())  # the action space of the real env and the datasets
        self.num_actions = len(self.actions)

    def step(self, action: int) -> tuple[np.ndarray, bool]:
        screens = []
        for i in range(FRAMESKIP):
            self.ale.act(self.actions[action])
            if i >= FRAMESKIP - 2:
                screens.append(self.ale.getScreenRGB())
        done = self.ale.game_over()
        return _resize(np.maximum(*screens)), done

    def reset(self) -> np.ndarray:
        self.ale.reset_game()
        return _resize(self.ale.getScreenRGB())

    def save(self) -> Any:
        return self.ale.cloneState()  # without the RNG: sticky actions stay random across replays

    def restore(self, state: Any) -> None:
        self.ale.restoreState(state)


class _ProcgenGame:
    """One Procgen game (easy, levels 0-199) with gym3 state save / restore."""

    def __init__(self, game: str, seed: int) -> None:
        from procgen import ProcgenGym3Env

        self.env = ProcgenGym3Env(num=1, env_name=game, num_levels=200, start_level=0, distribution_mode="easy",
                                  rand_seed=seed)
        self.num_actions = int(self.env.ac_space.eltype.n)

    def step(self, action: int) -> tuple[np.ndarray, bool]:
        self.env.act(np.array([action]))
        _, obs, first = self.env.observe()
        return obs["rgb"][0].copy(), bool(first[0])

    def reset(self) -> np.ndarray:
        return self.env.observe()[1]["rgb"][0].copy()  # gym3 resets inside step(); the current frame is a start

    def save(self) -> Any:
        return self.env.callmethod("get_state")

    def restore(self, state: Any) -> None:
        self.env.callmethod("set_state", state)


def _resize(frame: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=(FRAME, FRAME), mode="area")[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def make_game(env_id: str, seed: int, sticky: float = STICKY) -> _AleGame | _ProcgenGame:
    """The real game behind ``env_id`` with state save / restore."""
    family, game = parse_env_id(env_id)
    return _AleGame(game, seed, sticky) if family == "ale" else _ProcgenGame(game, seed)


def measure(env_id: str, states: int, horizon: int, seed: int, sticky: float = STICKY) -> dict[str, np.ndarray]:
    """Per-horizon mean moving-region MSE of a replay (``again``) and of another action sequence (``other``), and
    the number of ``windows`` scored (a window that crosses an episode end is skipped)."""
    if states < 1 or horizon < 1:
        raise ValueError(f"states and horizon must be >= 1, got {states} and {horizon}")
    if not 0.0 <= sticky < 1.0:
        raise ValueError(f"sticky must lie in [0, 1), got {sticky}")
    rng = np.random.default_rng(seed)
    game = make_game(env_id, seed, sticky)
    game.reset()
    again = np.full((states, horizon), np.nan)
    other = np.full((states, horizon), np.nan)
    for k in range(states):
        steps, done = int(rng.integers(10, 61)), False
        while steps > 0 or done:  # never start a window on a reset frame: it is not a stepped (max-pooled) frame
            if done:
                game.reset()
            frame, done = game.step(int(rng.integers(game.num_actions)))
            steps -= 1
        state = game.save()
        sequences = [rng.integers(game.num_actions, size=horizon)]
        sequences += [sequences[0], rng.integers(game.num_actions, size=horizon)]
        futures, ended = [], False
        for actions in sequences:
            game.restore(state)
            frames = []
            for a in actions:
                f, done = game.step(int(a))
                frames.append(f)
                ended |= done
            futures.append(np.stack(frames))
        game.restore(state)
        if ended:  # an episode boundary inside the window: its frames are not one game's future
            continue
        reference = futures[0]
        previous = np.concatenate([frame[None], reference[:-1]])
        again[k] = moving_region_mse(futures[1], reference, previous).mse
        other[k] = moving_region_mse(futures[2], reference, previous).mse
    return {"again": np.nanmean(again, axis=0), "other": np.nanmean(other, axis=0),
            "windows": np.sum(~np.isnan(other), axis=0)}


def held_out_error(simulator: str | Path, horizon: int) -> np.ndarray:
    """The simulator card's held-out moving-region MSE with true actions at h = 1..horizon."""
    config = json.loads((Path(simulator) / "simulator_config.json").read_text())
    try:
        rows = {int(r["h"]): r["moving_mse model"] for r in config["metrics"]["table"]["rows"]
                if str(r["h"]).isdigit()}
    except (KeyError, TypeError) as e:
        raise SystemExit(f"{simulator}: its simulator_config.json holds no held-out table ({e!r}); evaluate it "
                         "first: python -m dws_gym.evaluation --simulator ... --record") from e
    return np.array([rows.get(h, np.nan) for h in range(1, horizon + 1)], dtype=np.float64)


def table(result: dict[str, np.ndarray], model_error: np.ndarray | None) -> str:
    head = "| h | windows | again (replay) | other (actions changed) |"
    rule = "|---|---|---|---|"
    if model_error is not None:
        head += " simulator e (held-out) | sensitivity ceiling (estimate) other / (e + other) |"
        rule += "---|---|"
    lines = [head, rule]
    for h in range(len(result["other"])):
        o = result["other"][h]
        line = f"| {h + 1} | {int(result['windows'][h])} | {result['again'][h]:.5f} | {o:.5f} |"
        if model_error is not None:
            e = model_error[h]
            line += f" {e:.5f} | {o / (e + o):.3f} |"
        lines.append(line)
    return "\n".join(lines)


def main(args: Args) -> str:
    """Measure, print the table (and append it to the results file with --write-results); returns the table."""
    result = measure(args.env_id, args.states, args.horizon, args.seed, args.sticky)
    model_error = held_out_error(args.simulator, args.horizon) if args.simulator else None
    text = table(result, model_error)
    print(text)
    if args.write_results:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python bench/action_effect.py " + " ".join(sys.argv[1:])
        with Path(args.results_file).open("a") as f:
            f.write(f"\n## How much the actions move {args.env_id}'s next frames ({now})\n\n"
                    f"Machine: {describe_machine()}  \nCommand: `{command}`  \nMoving-region MSE "
                    "against a reference future from the same saved state (the held-out table's mask).\n\n"
                    f"{text}\n")
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
