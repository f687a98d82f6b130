"""Model-based RL comparison: PPO with prioritized imagination, uniform imagination, and no imagination (plain PPO).

Runs ``ppo_dws.py`` once per arm (``--imagination none / uniform / prioritized``) and seed at the same real-step
budget, each run in its own folder ``{--out}/{arm}_s{seed}``, then reads every run's TensorBoard events and compares
the arms on the real env:

* a plot (``--plot``, needs matplotlib; ``--plot-path``, default ``docs/ppo_comparison.png``): mean ± std over seeds of
  ``eval/episodic_return`` against real env steps, one line per arm;
* a table, printed and (``--write-results``) appended to bench/RESULTS.md with machine, command and date: per arm the
  final eval return, the area under the eval curve, wall time per run, imagined transitions per run, and the mean gap
  between the imagined and the real reward.

    python bench/ppo_comparison.py --jobs 3 --threads 1 --plot --write-results     # 3 arms x seeds 1 2 3, 100k steps
    python bench/ppo_comparison.py --seeds 1 --total-timesteps 20000 --extra="--eval-every 5000"   # quick look
    python bench/ppo_comparison.py --resume --jobs 3 --threads 1 --plot --write-results   # after an interruption

Definitions (every "± x" is numpy's population std over seeds, ``ddof=0``):

* **final return**: the run's last ``eval/episodic_return`` (the evaluation ``ppo_dws.py`` runs after its last
  iteration, ``--eval-episodes`` real episodes under the sampling policy).
* **AUC**: the trapezoid area under the run's eval curve (return against real steps) divided by the steps it spans,
  i.e. the mean eval return over training (higher: learned sooner, not only better at the end).
* **wall time**: the time each run's event files span (first to last event, summed over the files of a resumed run,
  so the work redone after an interruption counts too); simulator and env start-up before the first event are left
  out.
* **imagined transitions**: counted from the logs: the imagined rollouts the run logged (one
  ``charts/imagined_reward_mean`` per rollout) × ``num_dream_envs`` × ``horizon`` (from the run's logged
  hyperparameters). Real steps are ``--total-timesteps`` for every arm.
* **imagined − real reward**: the mean over iterations of ``charts/imagined_reward_mean - charts/real_reward_mean``
  (per-transition rewards as they enter the loss: the sign of the reward for Atari); how far the dreams' reward
  rate is from the real one under the same policy.

Every arm runs with ``--no-episodic-life`` unless ``--extra`` says otherwise: simulators predict game over, not a
lost life, so the imagined arms cannot end value targets at a lost life, and the plain arm follows the same rule so
that the arms differ only in imagination.

``--resume`` keeps runs whose checkpoint reached the budget (``ppo_dws.py`` writes its last checkpoint after the last
iteration and its final evaluation) and continues the others with ``ppo_dws.py --resume``; a run without a checkpoint
starts afresh. Each run's console output goes to ``{run folder}/stdout.log``.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from dws_gym.flags import flag_given, usage_error
from dws_gym.jobs import Job, run_jobs

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("none", "uniform", "prioritized")
EVAL_TAG = "eval/episodic_return"
IMAGINED_TAG = "charts/imagined_reward_mean"
REAL_TAG = "charts/real_reward_mean"
HPARAMS_TAG = "hyperparameters/text_summary"
DEFAULT_PLOT = "docs/ppo_comparison.png"


# ================================================================================================== reading the logs
def _event_files(folder: Path) -> list[Path]:
    """The run's event files in the order they were written (their names start with the creation time)."""

    def key(p: Path) -> tuple[int, int, str]:  # events.out.tfevents.{time}.{host}.{pid}.{counter}
        parts = p.name.split(".")
        stamp = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
        return stamp, int(parts[-1]) if parts[-1].isdigit() else 0, p.name

    return sorted(folder.glob("events.out.tfevents.*"), key=key)


def _parse_hparams(text: str) -> dict[str, str]:
    """The ``|param|value|`` table ``ppo_dws.py`` logs as text, as strings."""
    out = {}
    for line in text.splitlines():
        cells = line.strip().strip("|").split("|")
        if len(cells) == 2 and cells[0] not in ("param", "-"):
            out[cells[0].strip()] = cells[1].strip()
    return out


def read_run(folder: str | os.PathLike) -> dict[str, Any]:
    """Scalars, hyperparameters and wall time of one ``ppo_dws.py`` run folder.

    A resumed run has one event file per start; the steps a later file logs replace the same and later steps of the
    earlier files (the work redone after the checkpoint). Returns ``{"scalars": {tag: (steps, values)}, "hparams":
    {name: str}, "wall_s": float}``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    hparams: dict[str, str] = {}
    wall = 0.0
    for path in _event_files(Path(folder)):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        times = []
        for tag in tags["scalars"]:
            events = acc.Scalars(tag)
            if not events:
                continue
            times += [e.wall_time for e in events]
            first = min(e.step for e in events)
            kept = [(s, v) for s, v in scalars.get(tag, []) if s < first]
            scalars[tag] = kept + [(e.step, e.value) for e in events]
        for tag in tags["tensors"]:
            events = acc.Tensors(tag)
            times += [e.wall_time for e in events]
            if tag == HPARAMS_TAG and events and events[-1].tensor_proto.string_val:
                hparams = _parse_hparams(events[-1].tensor_proto.string_val[0].decode())
        if times:
            wall += max(times) - min(times)
    return {
        "scalars": {tag: (np.array([s for s, _ in pts], dtype=np.int64), np.array([v for _, v in pts], dtype=float))
                    for tag, pts in scalars.items()},
        "hparams": hparams,
        "wall_s": wall,
    }


def auc(steps: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid area under ``values`` against ``steps`` over the steps it spans (a single point: its value)."""
    if len(steps) == 0:
        return float("nan")
    if len(steps) == 1 or steps[-1] == steps[0]:
        return float(values[-1])
    area = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(steps)))
    return area / float(steps[-1] - steps[0])


def summarize_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """One run's numbers: final eval return, AUC, wall time, imagined transitions, imagined - real reward gap."""
    scalars = run["scalars"]
    steps, returns = scalars.get(EVAL_TAG, (np.zeros(0, np.int64), np.zeros(0)))
    out: dict[str, Any] = {
        "steps": steps, "returns": returns, "wall_s": float(run["wall_s"]),
        "final": float(returns[-1]) if len(returns) else float("nan"), "auc": auc(steps, returns),
        "imagined": 0, "gap": None,
    }
    if IMAGINED_TAG in scalars:
        i_steps, i_values = scalars[IMAGINED_TAG]
        hp = run["hparams"]
        try:
            out["imagined"] = len(i_steps) * int(hp["num_dream_envs"]) * int(hp["horizon"])
        except (KeyError, ValueError):
            out["imagined"] = None  # no hyperparameters in the logs
        if REAL_TAG in scalars:
            r_steps, r_values = scalars[REAL_TAG]
            real = dict(zip(r_steps.tolist(), r_values.tolist()))
            gaps = [v - real[s] for s, v in zip(i_steps.tolist(), i_values.tolist()) if s in real]
            out["gap"] = float(np.mean(gaps)) if gaps else None
    return out


def arm_curve(summaries: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of the eval return, on the union of the seeds' eval steps where all seeds have data
    (each seed linearly interpolated there; seeds of one budget evaluate at the same steps, so usually exact)."""
    curves = [(s["steps"], s["returns"]) for s in summaries if len(s["steps"])]
    if not curves:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    grid = np.unique(np.concatenate([c[0] for c in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    values = np.stack([np.interp(grid, st, rt) for st, rt in curves])
    return grid, values.mean(0), values.std(0)


def _mean_std(values: Sequence[float | None], fmt: str) -> str:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "n/a"
    return f"{format(np.mean(vals), fmt)} ± {format(np.std(vals), fmt.lstrip('+'))}"


def _duration(seconds: Sequence[float]) -> str:
    mean, std = float(np.mean(seconds)), float(np.std(seconds))
    if mean >= 120:
        return f"{mean / 60:.1f} ± {std / 60:.1f} min"
    return f"{mean:.1f} ± {std:.1f} s"


def comparison_table(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Markdown table, one row per arm, of :func:`summarize_run` results over that arm's seeds."""
    lines = ["| arm | seeds | final eval return | AUC (mean eval return) | wall time per run | imagined transitions "
             "per run | imagined − real reward |", "|---|---|---|---|---|---|---|"]
    for arm, runs in results.items():
        imagined = [r["imagined"] for r in runs]
        if any(v is None for v in imagined):
            imag = "n/a"
        else:
            imag = f"{np.mean(imagined):,.0f}" + (f" ± {np.std(imagined):,.0f}" if np.std(imagined) else "")
        gaps = [r["gap"] for r in runs]
        lines.append(f"| {arm} | {len(runs)} | {_mean_std([r['final'] for r in runs], '.2f')} | "
                     f"{_mean_std([r['auc'] for r in runs], '.2f')} | {_duration([r['wall_s'] for r in runs])} | "
                     f"{imag} | {'n/a' if all(g is None for g in gaps) else _mean_std(gaps, '+.4f')} |")
    return "\n".join(lines)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_comparison(results: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike,
                    title: str = "") -> Path:
    """Mean ± std over seeds of the real-env eval return against real steps, one line per arm, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for arm, runs in results.items():
        steps, mean, std = arm_curve(runs)
        if not len(steps):
            continue
        label = f"{arm} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=label)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("real env steps")
    ax.set_ylabel("eval episodic return (real env)")
    ax.set_title(title or "PPO: imagination arms, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def collect(out: str | os.PathLike, arms: Sequence[str], seeds: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """:func:`summarize_run` of every ``{out}/{arm}_s{seed}`` that has event files, grouped by arm."""
    results: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        for seed in seeds:
            folder = run_dir(out, arm, seed)
            if _event_files(folder):
                results.setdefault(arm, []).append(summarize_run(read_run(folder)))
    return results


# ================================================================================================== running
def run_dir(out: str | os.PathLike, arm: str, seed: int) -> Path:
    return Path(out) / f"{arm}_s{seed}"


def finished(folder: Path, total_timesteps: int) -> bool:
    """Whether ``folder``'s checkpoint is the last one of a run of ``total_timesteps`` real steps.

    ``ppo_dws.py`` writes a checkpoint after its last iteration (and final evaluation); its iteration then equals
    ``total_timesteps // batch_size``. A periodic checkpoint has fewer iterations.
    """
    path = folder / "checkpoint" / "training_state.pt"
    if not path.is_file():
        return False
    import torch

    try:  # mmap: the start-state buffer inside is not read
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(state["iteration"]) >= total_timesteps // int(state["args"]["batch_size"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is not a finished run
        return False


@dataclass
class Args:
    arms: tuple[Literal["none", "uniform", "prioritized"], ...] = ARMS
    """--imagination modes compared"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds per arm"""
    total_timesteps: int = 100_000
    """real env steps per run (every arm)"""
    env_id: str = "ALE/Breakout-v5"
    """real env"""
    simulator: str | None = None
    """simulator folder or Hub id (default: ppo_dws.py's, the shipped one)"""
    out: str = "runs/ppo-comparison"
    """runs go to {out}/{arm}_s{seed}"""
    extra: str = ""
    """more ppo_dws.py flags as one string, joined with = (--extra="--num-envs 4 --eval-every 5000")"""
    jobs: int = 1
    """runs at the same time"""
    threads: int | None = None
    """torch threads per run (default: all, or 1 with --jobs > 1)"""
    resume: bool = False
    """keep runs that already finished under --out and continue the others from their checkpoints"""
    plot: bool = False
    """write the return curves as a PNG to --plot-path (needs matplotlib)"""
    plot_path: str = DEFAULT_PLOT
    """where --plot writes"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: str = str(Path(__file__).with_name("RESULTS.md"))
    """the results file"""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.jobs < 1:
        usage_error("--jobs must be >= 1")
    if args.plot and not have_matplotlib():
        usage_error("--plot needs matplotlib: pip install matplotlib")
    return args


def run_all(args: Args) -> list[str]:
    """Run every (arm, seed) not yet finished, ``--jobs`` at a time; return the runs that failed."""

    def jobs():
        for seed in args.seeds:  # seeds outermost: an interrupted comparison has whole seeds of every arm
            for arm in args.arms:
                name, folder = f"{arm}_s{seed}", run_dir(args.out, arm, seed)
                if args.resume and finished(folder, args.total_timesteps):
                    print(f"== {name}: finished in {folder}, kept", flush=True)
                    continue
                cmd = [sys.executable, str(ROOT / "ppo_dws.py"), "--env-id", args.env_id, "--imagination", arm,
                       "--seed", str(seed), "--total-timesteps", str(args.total_timesteps), "--output-dir",
                       str(folder)]
                if args.simulator:
                    cmd += ["--simulator", args.simulator]
                extra = shlex.split(args.extra)
                if not flag_given(extra, "--episodic-life", "--no-episodic-life"):
                    cmd.append("--no-episodic-life")  # the same value targets in every arm (see the module doc)
                cmd += extra
                if args.resume and (folder / "checkpoint" / "training_state.pt").is_file():
                    cmd.append("--resume")
                else:  # a fresh run: old event files in its folder belong to a run it replaces
                    for old in _event_files(folder):
                        old.unlink()
                yield Job(name, cmd, folder / "stdout.log")

    threads = args.threads if args.threads is not None else (1 if args.jobs > 1 else None)
    return run_jobs(jobs(), args.jobs, threads)


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    args = parse_args(argv)
    failed = run_all(args)
    results = collect(args.out, args.arms, args.seeds)
    table = comparison_table(results)
    print(table)
    if args.plot:
        title = f"{args.env_id}: PPO by imagination, mean ± std over seeds {' '.join(map(str, args.seeds))}"
        print(f"plot: {plot_comparison(results, args.plot_path, title)}")
    if failed:
        raise SystemExit(f"runs failed: {', '.join(failed)} (see their stdout.log); nothing written to "
                         f"{args.results_file}. Rerun with --resume.")
    if args.write_results:
        from dws_gym.hardware import describe_machine

        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python bench/ppo_comparison.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
        sim = args.simulator or "the shipped one"
        with open(args.results_file, "a", encoding="utf-8") as f:
            f.write(
                f"\n## PPO: prioritized vs uniform imagination vs none ({date})\n\n"
                f"Machine: {describe_machine()}  \nCommand: `{command}`  \n"
                f"`ppo_dws.py` on {args.env_id}, {args.total_timesteps} real steps per run, seeds "
                f"{' '.join(map(str, args.seeds))}, simulator {sim}. Mean ± std (population) over seeds. Final: the "
                "last eval return (real env); AUC: area under the eval return curve over the real steps it spans "
                "(the mean eval return over training); wall time: the span of each run's event files; imagined "
                "transitions: counted from the logs (imagined rollouts logged × num_dream_envs × horizon); "
                "imagined − real reward: mean over iterations of charts/imagined_reward_mean − "
                "charts/real_reward_mean (sign-clipped rewards for Atari)."
                + (f" Plot: `{args.plot_path}`." if args.plot else "") + f"\n\n{table}\n"
            )
        print(f"appended to {args.results_file}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
