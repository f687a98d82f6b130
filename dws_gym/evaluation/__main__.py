"""Score a saved simulator on the held-out episodes of a trajectory store: the held-out table and acceptance checks.

    python -m dws_gym.evaluation --simulator dws_gym/assets/simulators/breakout --data data/breakout --clips 128
    python -m dws_gym.evaluation --simulator runs/breakout/simulator --data data/breakout --sampling-steps 1 2 4
    python -m dws_gym.evaluation --simulator runs/breakout/simulator --data data/breakout --sampling-steps 2 --record
    python -m dws_gym.evaluation --simulator runs/breakout/simulator --data data/breakout --no-events \
        --closed-loop-episodes 0                                   # frame metrics only

The held-out episodes are the last ``--held-out-fraction`` of the store's episodes of the simulator's env id (the
split ``train_world_model.py`` makes), so a simulator is scored on episodes it never trained on when it was trained
on the same store. Windows are drawn with a fixed seed: the same command gives the same windows, so tables of
different simulators or sampling steps are comparable row by row.

Besides the frame metrics, each table reports the rollout's reward and termination *events* matched with the real
ones within ``--event-tolerance`` steps (``--no-events`` skips them) and, unless ``--closed-loop-episodes 0``, the
returns of ``--closed-loop-episodes`` seeded real games and their dreams under the same random actions for
``--closed-loop-steps`` steps (:func:`dws_gym.evaluation.closed_loop_returns`; needs the real env of the
simulator's env id), followed by the event acceptance verdict.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import tyro

from dws_gym.cpu_allocator import keep_freed_memory
from dws_gym.data import TrajectoryStore
from dws_gym.evaluation import EvalResult, closed_loop_returns, evaluate_held_out, held_out_windows
from dws_gym.flags import flag_given
from dws_gym.simulator import Simulator


@dataclass
class EvaluateArgs:
    """Open-loop rollouts of a simulator on held-out real windows, next to copying the last frame."""

    simulator: str
    """simulator folder or Hugging Face Hub repo id"""
    data: str
    """trajectory store holding episodes of the simulator's env id"""
    clips: int = 128
    """held-out windows (drawn with replacement when the episodes hold fewer)"""
    horizon: int = 15
    """open-loop steps per window"""
    held_out_fraction: float = 0.1
    """the last fraction of the env id's episodes is held out (as in train_world_model.py)"""
    sampling_steps: list[int] = field(default_factory=list)
    """Euler steps per frame to score, one table each (default: the simulator's own)"""
    batch_size: int | None = 64
    """windows per simulator call (bounds memory)"""
    seed: int = 0
    """seeds the windows, the sampling noise and the action shuffle"""
    device: str = "cpu"
    """where the simulator runs: cpu | cuda | cuda:<i>"""
    dtype: Literal["fp32", "bf16", "auto"] = "fp32"
    """precision it steps in: fp32 | bf16 | auto (bf16 where the device has native bf16), as DreamVectorEnv takes it;
    fp32 (the default) is what recorded tables use unless they say otherwise"""
    compile: bool = False
    """torch.compile the simulator's step (Simulator.compile), as a dream env with compile=True runs it"""
    out: str | None = None
    """write the results as JSON here"""
    record: bool = False
    """write the table into the simulator folder's config and model card (one --sampling-steps value, which becomes
    the simulator's default so the card describes how it steps)"""
    events: bool = True
    """score the rollout's rewards and terminations as events (recall / precision per horizon)"""
    event_tolerance: int = 1
    """steps a dreamed event may be early or late and still match a real one"""
    event_match_sign: bool = False
    """match reward events only with real events of the same sign"""
    closed_loop_episodes: int = 100
    """real games compared with their dreams under the same random actions (0: skip the closed-loop returns)"""
    closed_loop_steps: int = 100
    """steps per closed-loop game after the context"""
    episode_ends: bool = True
    """also draw windows that reach past their episode's end (the context real), so an episode's last step (a game
    over, a Procgen coin) can be scored at any horizon (from h = 2 where its frame is unknown); frames past the end
    leave the frame metrics (--no-episode-ends: only windows inside their episodes, as cards recorded before)"""


def evaluate(args: EvaluateArgs, simulator: Simulator | None = None) -> dict[int, EvalResult]:
    """Run the evaluation ``args`` describes; returns ``{sampling_steps: EvalResult}``."""
    if args.closed_loop_episodes < 0 or args.closed_loop_steps < 1 or args.event_tolerance < 0:
        raise ValueError("--closed-loop-episodes must be >= 0, --closed-loop-steps >= 1 and --event-tolerance >= 0")
    sim = simulator if simulator is not None else load_simulator(args)
    store = TrajectoryStore(args.data)
    clips = held_out_windows(store, sim.config.env_id, sim.context_frames, args.horizon, args.clips,
                             args.held_out_fraction, args.seed, reach_end=args.episode_ends)
    results: dict[int, EvalResult] = {}
    for steps in args.sampling_steps or [int(sim.config.sampling_steps)]:
        generator = torch.Generator(device=sim.device).manual_seed(args.seed)
        result = evaluate_held_out(sim, clips, horizon=args.horizon, generator=generator, shuffle_rng=args.seed,
                                   batch_size=args.batch_size, steps=int(steps), events=args.events,
                                   event_tolerance=args.event_tolerance, event_match_sign=args.event_match_sign,
                                   keep_partial=args.episode_ends)
        if args.closed_loop_episodes:
            result.closed_loop = closed_loop_returns(sim, sim.config.env_id, args.closed_loop_episodes,
                                                     args.closed_loop_steps, args.seed, sampling_steps=int(steps))
        results[int(steps)] = result
    return results


def load_simulator(args: EvaluateArgs) -> Simulator:
    """The simulator ``args`` names, on its device, in its precision, compiled if asked; says which ran."""
    sim = Simulator.from_pretrained(args.simulator, device=args.device, dtype=args.dtype)
    if args.compile:
        sim.compile()
    # As a dream env on a CPU steps (dws_gym.cpu_allocator).
    allocator = f"; {keep_freed_memory()}" if sim.device.type == "cpu" else ""
    print(f"precision: {sim.precision.reason}; compiled: {sim.compiled or 'no'}{allocator}", file=sys.stderr)
    return sim


def record(sim: Simulator, folder: str | Path, steps: int, result: EvalResult, command: str) -> Path:
    """Make ``result`` (scored at ``steps`` sampling steps) the simulator's recorded fidelity and rewrite ``folder``.

    ``steps`` becomes the simulator's default, so its config, card and table agree. The folder is replaced
    atomically: a failure leaves the previous copy intact.
    """
    sim.config.sampling_steps = int(steps)
    world_config = getattr(sim.world_model, "config", None)
    if world_config is not None and hasattr(world_config, "sampling_steps"):
        world_config.sampling_steps = int(steps)
    metrics = result.to_dict()
    metrics["evaluation_command"] = command
    keep = {k: v for k, v in (sim.config.metrics or {}).items() if k == "transitions_per_second"}
    sim.config.metrics = {**metrics, **keep}
    return sim.save_pretrained(folder)


def main(argv: list[str] | None = None) -> dict[int, EvalResult]:
    """CLI entry point: print one table (and acceptance summary) per sampling-step count."""
    args = tyro.cli(EvaluateArgs, args=argv)
    folder = Path(args.simulator)
    if args.record and not (folder / "simulator_config.json").is_file():
        raise SystemExit(f"--record rewrites a simulator folder; {args.simulator} is not one (download it first).")
    if args.record and len(args.sampling_steps) > 1:
        raise SystemExit("--record takes one --sampling-steps value (the one the recorded table describes).")
    if args.record and args.dtype != "fp32":
        raise SystemExit("--record rewrites the simulator's weights, which a bf16 run has rounded: record with "
                         "--dtype fp32 (the default), and compare other precisions with --out.")
    sim = load_simulator(args)
    results = evaluate(args, simulator=sim)
    summary: dict[str, Any] = {}
    for steps, result in results.items():
        print(f"\n## {args.simulator}: {steps} sampling step(s)\n")
        print(result.to_markdown())
        summary[str(steps)] = {**result.to_dict(), "precision": sim.precision.name,
                               "compiled": sim.compiled is not None}
    if args.out is not None:
        Path(args.out).write_text(json.dumps(summary, indent=1))
        print(f"\nresults written to {args.out}")
    if args.record:
        ((steps, result),) = results.items()
        given = list(sys.argv[1:] if argv is None else argv)
        if not flag_given(given, "--episode-ends", "--no-episode-ends"):
            given.append("--episode-ends" if args.episode_ends else "--no-episode-ends")  # the draw, stated
        command = "python -m dws_gym.evaluation " + " ".join(given)
        sim.compile(False)
        record(sim.to("cpu"), folder, steps, result, command)
        print(f"\nrecorded in {folder / 'simulator_config.json'} and {folder / 'README.md'} ({steps} sampling steps)")
    return results


__all__ = ["EvaluateArgs", "cli", "evaluate", "main", "record"]


def cli() -> None:
    """The ``dws-evaluate`` console script: :func:`main` with exit status 0 on success (a script's return value would
    become its exit status)."""
    main()


if __name__ == "__main__":
    main()
