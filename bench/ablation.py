"""Ablations on one dataset and one budget: the DWS parts (``--suite dws``: action conditioning frame / global / none,
motion loss c) or the simulator recipe (``--suite recipe``: the U-Net default against its own parts and the Wan
transformer).

Runs ``train_world_model.py`` once per variant on the same trajectory store, with the same seed, steps and batch,
then collects each run's held-out table into one comparison (the mean row of each metric, and the acceptance checks)
and, with --write-results, appends it to bench/RESULTS.md — whatever it shows.

    python bench/ablation.py --data data/breakout --total-steps 2000 --write-results
    python bench/ablation.py --data data/breakout --total-steps 200 --extra="--batch-size 4"    # quick look
    python bench/ablation.py --data data/breakout --jobs 2 --threads 1     # two variants at a time, 1 thread each
    python bench/ablation.py --data data/breakout --resume ...   # after an interruption: same flags plus --resume
    python bench/ablation.py --suite recipe --data data/breakout-tracker --total-steps 300 --jobs 2 --write-results

Besides each run's held-out table, every variant is scored with the Breakout ball tracker (bench/ball_tracker.py) on
the same held-out windows when the env is Breakout: the share of frames whose dreamed ball lies within 4 px of the
real one, the number frame metrics miss (a model that freezes the ball passes them).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from dws_gym.flags import usage_error
from dws_gym.jobs import Job, run_jobs

ROOT = Path(__file__).resolve().parents[1]
SUITES: dict[str, dict[str, list[str]]] = {
    # The DWS module and loss, on the default backbone ("global" pools the actions: a Wan-only ablation, so it
    # trains the Wan transformer).
    "dws": {
        "frame, c=default": ["--unet.action-mode", "frame"],
        "global, c=default": ["--backbone", "flow", "--flow.action-mode", "global"],
        "none, c=default": ["--unet.action-mode", "none"],
        "frame, c=1 (plain loss)": ["--unet.action-mode", "frame", "--unet.motion-c", "1"],
    },
    # What made the Breakout default move the ball: its loss share on changed pixels, unrolled training, the backbone.
    "recipe": {
        "unet (default)": [],
        "unet, changed_share 0": ["--unet.changed-share", "0"],
        "unet, no unroll": ["--unet.no-unroll"],
        "wan (flow), patch 8": ["--backbone", "flow"],
    },
}
VARIANTS: dict[str, list[str]] = {name: flags for suite in SUITES.values() for name, flags in suite.items()}
COLUMNS = ["psnr model", "psnr copy", "moving_mse model", "moving_mse copy", "moving_mse shuffled", "action_sensitivity"]


def mean_row(metrics: dict) -> dict:
    rows = metrics.get("table", {}).get("rows", [])
    for row in rows:
        if row.get("h") == "mean":
            return row
    return {}


def early_sensitivity(metrics: dict, upto: int = 5) -> float | None:
    """Mean action sensitivity over h = 1..upto (the horizons of the acceptance rule), or None if absent."""
    rows = [r for r in metrics.get("table", {}).get("rows", []) if isinstance(r.get("h"), int) and r["h"] <= upto]
    values = [r.get("action_sensitivity") for r in rows]
    if not values or any(not isinstance(v, (int, float)) for v in values):
        return None
    return sum(values) / len(values)


def finished(out: Path, total_steps: int) -> bool:
    """Whether ``out`` holds a simulator exported by a run of ``total_steps`` steps."""
    config = out / "simulator" / "simulator_config.json"
    if not config.exists():
        return False
    return json.loads(config.read_text()).get("training", {}).get("steps") == total_steps


def ball_shares(simulator: Path, data: str, clips: int) -> dict[str, float]:
    """Share of held-out frames whose dreamed (and copied) ball lies within 4 px of the real one, h = 1..5 / 1..15."""
    import torch

    from ball_tracker import ball_agreement  # bench/ is on the path of a script run from it

    from dws_gym.data import TrajectoryStore
    from dws_gym.evaluation import held_out_windows
    from dws_gym.simulator import Simulator

    sim = Simulator.from_pretrained(simulator, dtype="auto")
    windows = held_out_windows(TrajectoryStore(data), sim.config.env_id, sim.context_frames, 15, clips, 0.1, 0)
    r = ball_agreement(sim, windows, 15, generator=torch.Generator().manual_seed(0))
    out = {}
    for upto in (5, 15):
        present = r["present"][:, :upto]
        n = max(int(present.sum()), 1)
        out[f"ball h1-{upto}"] = float(r["model_agree"][:, :upto].sum() / n)
        out[f"copy ball h1-{upto}"] = float(r["copy_agree"][:, :upto].sum() / n)
    return out


@dataclass
class Args:
    data: str
    """trajectory store shared by every variant"""
    env_id: str = "ALE/Breakout-v5"
    """real env the variants imitate"""
    total_steps: int = 2000
    """world-model steps per variant"""
    seed: int = 1
    """seed of every variant"""
    out: str = "runs/ablation"
    """variants go to {out}/{variant}"""
    suite: Literal["dws", "recipe"] = "dws"
    """which set of variants"""
    variants: Annotated[tuple[str, ...] | None, tyro.conf.arg(
        help="a subset of the variants by name (default: the suite's): " + "; ".join(VARIANTS))] = None
    ball_clips: int = 64
    """held-out windows for the ball tracker (0: skip)"""
    extra: str = ""
    """more train_world_model.py flags as one string, joined with = (--extra="--batch-size 4")"""
    jobs: int = 1
    """variants trained at the same time"""
    threads: int | None = None
    """torch threads per variant (default: all, or 1 with --jobs > 1)"""
    resume: bool = False
    """keep variants that already finished under --out and continue the others from their checkpoints"""
    write_results: bool = False
    """append the comparison to --results-file"""
    results_file: str = str(Path(__file__).with_name("RESULTS.md"))
    """the results file"""


def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.variants is None:
        args.variants = tuple(SUITES[args.suite])
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        usage_error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    if args.jobs < 1:
        usage_error("--jobs must be >= 1")
    outs = {name: Path(args.out) / name.replace(" ", "").replace(",", "_").replace("(", "").replace(")", "")
            for name in args.variants}

    def jobs():
        for name, out in outs.items():
            if args.resume and finished(out, args.total_steps):
                print(f"== {name}: finished in {out}, kept", flush=True)
                continue
            cmd = [sys.executable, str(ROOT / "train_world_model.py"), "--env-id", args.env_id, "--data", args.data,
                   "--total-steps", str(args.total_steps), "--seed", str(args.seed), "--output-dir", str(out),
                   "--no-capture-video", "--no-progress", "--log-every", "100", *VARIANTS[name],
                   *shlex.split(args.extra)]
            if args.resume and (out / "checkpoint").exists():
                cmd.append("--resume")
            yield Job(name, cmd)

    threads = args.threads if args.threads is not None else (1 if args.jobs > 1 else None)
    failed = run_jobs(jobs(), args.jobs, threads)
    if failed:
        raise SystemExit(f"variants failed: {', '.join(failed)} (see their output above); rerun with --resume.")
    results = {}
    balls: dict[str, dict] = {}
    for name, out in outs.items():
        config = json.loads((out / "simulator" / "simulator_config.json").read_text())
        results[name] = config["metrics"]
        if args.ball_clips > 0 and "Breakout" in args.env_id:
            balls[name] = ball_shares(out / "simulator", args.data, args.ball_clips)

    ball_cols = ["ball h1-5", "ball h1-15", "copy ball h1-5", "copy ball h1-15"] if balls else []
    header = "| variant | " + " | ".join(COLUMNS) + " | action_sensitivity h1-5 | " + "".join(
        f"{c} | " for c in ball_cols) + "acceptance |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3 + len(ball_cols))]
    for name, metrics in results.items():
        row = mean_row(metrics)
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), (int, float)) else "n/a" for c in COLUMNS]
        early = early_sensitivity(metrics)
        cells.append("n/a" if early is None else f"{early:.4g}")
        cells += [f"{balls[name][c]:.3f}" for c in ball_cols] if balls else []
        acc = metrics.get("acceptance") or {}
        verdict = "pass" if acc.get("all") else ("fail" if acc else "n/a (horizon < 15)")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    table = "\n".join(lines)
    print(table)
    if args.write_results:
        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(args.results_file, "a") as f:
            f.write(f"\n## {'DWS' if args.suite == 'dws' else 'Simulator recipe'} ablation ({date})\n\nCommand: `python {shlex.join(sys.argv)}`  \nSame data, seed and "
                    f"budget ({args.total_steps} steps) per variant; mean over horizons 1..15 of the held-out table (and "
                    "the mean action sensitivity over h = 1..5, the horizons of the acceptance rule).\n\n"
                    f"{table}\n")


if __name__ == "__main__":
    main()
