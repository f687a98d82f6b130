"""Choose a simulator's stepping threshold ``keep_below`` on closed-loop games, with its reward head calibrated.

For each ``--keep-below`` value the simulator steps with that threshold; with ``--calibrate-windows N`` its reward
head's payment threshold is first set (from the head's saved offsets, each time) so that it pays as often as the
real game did on dreams of ``N`` uniformly drawn training windows
(:func:`dws_gym.models.reward_training.calibrate_reward_rate`, as ``python -m dws_gym.retrain_reward_head
--calibrate-windows`` does). Then the same random-action games are played in the real env and the dream from the
same real start for every ``--seeds`` value (:func:`dws_gym.evaluation.closed_loop.closed_loop_returns`), and the
table gives each side's mean return and the pooled dream / real ratio.

Choose on seeds that the final score does not use: ``python -m dws_gym.evaluation`` plays seed 0, so the default
seeds here are 1 and 2. A threshold too low lets faint noise through (more balls launch, and more artefacts are
paid as hits); too high erases a faint ball, and the dream pays too little.

    python bench/keep_below.py --simulator runs/breakout-dreamhead-s2 --data data/breakout-tracker \\
        --keep-below 0.06 0.065 0.07 --calibrate-windows 1024 --write-results
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

from dws_gym.data import TrajectoryStore, env_episodes, split_episodes
from dws_gym.evaluation.closed_loop import closed_loop_returns
from dws_gym.hardware import describe_machine
from dws_gym.models.reward_training import calibrate_reward_rate, calibration_dreams
from dws_gym.simulator import Simulator


@dataclass
class Args:
    simulator: str
    """simulator folder or Hugging Face Hub id"""
    data: str
    """trajectory store of the simulator's game (its training episodes give the calibration windows)"""
    keep_below: tuple[float, ...] = (0.06, 0.065, 0.07)
    """thresholds to compare"""
    calibrate_windows: int = 1024
    """uniformly drawn training windows dreamed to calibrate the head at each threshold (0: keep the saved head)"""
    horizon: int = 8
    """dreamed steps per calibration window"""
    seeds: tuple[int, ...] = (1, 2)
    """closed-loop seeds (python -m dws_gym.evaluation scores seed 0: leave it out)"""
    episodes: int = 100
    """games per seed"""
    steps: int = 100
    """steps per game after the context"""
    held_out_fraction: float = 0.1
    """the last fraction of the env id's episodes is held out (never used here)"""
    threads: int | None = None
    """torch CPU threads"""
    note: str = ""
    """free text added to the results section"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: Path = field(default_factory=lambda: Path(__file__).resolve().parent / "RESULTS.md")
    """the results file"""


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.keep_below or any(not 0 <= kb < 1 for kb in args.keep_below):
        raise SystemExit(f"--keep-below values must lie in [0, 1), got {args.keep_below}")
    if args.calibrate_windows < 0 or args.episodes < 2 or args.steps < 1 or not args.seeds:
        raise SystemExit("--calibrate-windows must be >= 0, --episodes >= 2, --steps >= 1 and --seeds non-empty")
    sim = Simulator.from_pretrained(args.simulator)
    if not hasattr(sim.world_model.config, "keep_below"):
        raise SystemExit(f"the {type(sim.world_model).__name__} of {args.simulator} has no keep_below threshold")
    store = TrajectoryStore(args.data)
    train_ids, _ = split_episodes(store, args.held_out_fraction,
                                  episode_ids=env_episodes(store, sim.config.env_id))
    saved = sim.reward_head.config.reward_logit_offset
    rows: list[dict[str, float]] = []
    for kb in args.keep_below:
        t0 = time.time()
        sim.world_model.config.keep_below = float(kb)
        sim.reward_head.config.reward_logit_offset = saved
        row: dict[str, float] = {"keep_below": float(kb)}
        if args.calibrate_windows:
            cal_set = calibration_dreams(sim.world_model,
                                         store.clips(sim.context_frames, args.horizon, episode_ids=train_ids),
                                         args.calibrate_windows, seed=1, progress=False)
            cal = calibrate_reward_rate(sim.reward_head, cal_set)
            row.update(shift=cal.shift, paid_before=cal.paid_before, real_paid=cal.real_paid,
                       cal_precision=cal.precision)
        reals, dreams = [], []
        for seed in args.seeds:
            result = closed_loop_returns(sim, episodes=args.episodes, steps=args.steps, seed=seed, reference=False)
            reals.append(float(np.mean(result.real_returns)))
            dreams.append(float(np.mean(result.dream_returns)))
            row[f"real {seed}"], row[f"dream {seed}"], row[f"corr {seed}"] = reals[-1], dreams[-1], result.correlation
        row["ratio"] = float(np.mean(dreams) / np.mean(reals)) if np.mean(reals) > 0 else float("nan")
        row["seconds"] = time.time() - t0
        rows.append(row)
        print(f"keep_below {kb:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "keep_below"),
              file=sys.stderr, flush=True)
    table = format_table(rows, args)
    print(table)
    if args.write_results:
        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python bench/keep_below.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        with open(args.results_file, "a", encoding="utf-8") as f:
            f.write(f"\n## Choosing keep_below on closed-loop games, head calibrated per threshold ({date})\n\n"
                    f"Machine: {describe_machine()}  \nCommand: `{command}`  \n"
                    + (f"Note: {args.note}  \n" if args.note else "") + f"\n{table}\n")
        print(f"appended to {args.results_file}", file=sys.stderr)
    return rows


def format_table(rows: list[dict[str, float]], args: Args) -> str:
    """Markdown: per threshold, the calibration (if any), each seed's real and dream mean returns, the pooled ratio."""
    cal = args.calibrate_windows > 0
    head = ["keep_below"] + (["head paid before calibration (real)", "calibration shift", "calibrated precision"]
                             if cal else [])
    for s in args.seeds:
        head += [f"real (seed {s})", f"dream (seed {s})", f"correlation (seed {s})"]
    head += ["pooled dream / real", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['keep_below']:g}"]
        if cal:
            cells += [f"{r['paid_before']:.0f} ({r['real_paid']:.0f})", f"{r['shift']:+.3f}",
                      f"{r['cal_precision']:.3f}"]
        for s in args.seeds:
            cells += [f"{r[f'real {s}']:.2f}", f"{r[f'dream {s}']:.2f}", f"{r[f'corr {s}']:.3f}"]
        cells += [f"{r['ratio']:.3f}", f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
