"""The paper's Table 2 at our budget: CQL and IQL with and without synthesized transitions, over seeds.

Runs ``offline/cql.py`` and ``offline/iql.py`` on ``--dataset`` alone and on ``--dataset`` plus
``--synthetic-dataset`` (``offline/augment.py``'s output), every arm with the same number of gradient steps, one
folder per run (``{--out}/{arm}_s{seed}``, its console output in ``stdout.log``), then reads each run's
``results.json`` and prints (``--write-results``: appends to bench/RESULTS.md) a table of the mean ± std over seeds
(population std) of the final evaluation return on every level range (Procgen: ``train`` = levels 0-199, ``test`` =
levels >= 250), next to the paper's numbers (He et al. 2025, Table 2: average return over 3 seeds, 1M expert + 1M
synthesized transitions).

    python offline/table2.py --dataset data/coinrun --synthetic-dataset data/coinrun-synthetic --seeds 1 2 3
    python offline/table2.py ... --resume          # after an interruption: keeps finished runs, continues the others
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from dws_gym.flags import usage_error
from dws_gym.jobs import Job, run_jobs

ROOT = Path(__file__).resolve().parents[1]
ARMS: dict[str, tuple[str, bool]] = {  # arm -> (script, with synthetic data)
    "CQL": ("cql.py", False),
    "CQL w/ wm": ("cql.py", True),
    "IQL": ("iql.py", False),
    "IQL w/ wm": ("iql.py", True),
}
PAPER: dict[str, dict[str, str]] = {  # He et al. 2025, Table 2 (mean ± std over 3 seeds)
    "procgen/coinrun": {"CQL": "8.58 ± 0.29", "CQL w/ wm": "8.81 ± 0.21", "IQL": "8.52 ± 0.26",
                        "IQL w/ wm": "8.93 ± 0.19"},
    "procgen/ninja": {"CQL": "5.92 ± 0.2", "CQL w/ wm": "6.31 ± 0.23", "IQL": "5.7 ± 0.35",
                      "IQL w/ wm": "6.33 ± 0.17"},
}


def run_dir(out: str | Path, arm: str, seed: int) -> Path:
    return Path(out) / f"{arm.lower().replace(' w/ wm', '-wm')}_s{seed}"


def read_result(folder: Path, total_steps: int | None = None) -> dict[str, Any] | None:
    """The run's ``results.json`` if it finished (``total_steps`` gradient steps when given), else ``None``."""
    path = folder / "results.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if total_steps is not None and int(result.get("steps", -1)) < total_steps:
        return None
    return result


def action_profile(folder: Path, dataset: str | Path, n: int = 1024, seed: int = 0) -> dict[str, Any] | None:
    """How much a run's final policy depends on the state: its most likely action (CQL: argmax Q) on ``n`` real
    observations drawn with a fixed seed from ``dataset``, as ``{"top_share", "top_action", "distinct",
    "observations"}``; ``None`` without a saved policy. A share of 1.0 is a constant policy, whatever its return.

    Cached in ``{folder}/action_profile.json`` under a key of the policy file's size and time and the draw, so a run
    resumed to more steps (a new policy) is profiled again.
    """
    weights = folder / "policy" / "model.safetensors"
    if not weights.is_file():
        return None
    stat = weights.stat()
    key = {"policy": [stat.st_size, stat.st_mtime_ns], "dataset": str(Path(dataset).resolve()), "n": n, "seed": seed}
    cache = folder / "action_profile.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["profile"]
    except (OSError, ValueError, AttributeError, KeyError):  # none yet, or cut off: profile again
        pass
    import torch

    from dws_gym.agents import load_policy
    from dws_gym.data import TrajectoryStore

    policy = load_policy(folder / "policy")
    store = TrajectoryStore(dataset)
    obs = store.transitions(frame_stack=policy.config.frame_stack or 1).sample(n, np.random.default_rng(seed))["obs"]
    with torch.no_grad():
        logits, _ = policy(obs)
    counts = np.bincount(logits.argmax(1).numpy(), minlength=logits.shape[1])
    top = int(counts.argmax())
    meanings = policy.config.action_meanings or store.meta(store.episode_ids()[0]).action_meanings
    profile = {"top_share": float(counts[top] / counts.sum()), "top_action": meanings[top] if meanings else str(top),
               "distinct": int((counts > 0).sum()), "observations": int(counts.sum())}
    tmp = cache.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "profile": profile}) + "\n")
    os.replace(tmp, cache)
    return profile


def table(results: dict[str, list[dict[str, Any]]], env_id: str | None,
          profiles: dict[str, list[dict[str, Any] | None]] | None = None) -> str:
    """Markdown table: per arm, mean ± std over seeds of each level range's final return, and the paper's figure;
    with ``profiles`` (per arm, :func:`action_profile` of each run), the share of the policy's top action too."""
    ranges = sorted({name for runs in results.values() for r in runs for name in r.get("eval", {})},
                    key=lambda n: ("train", "test", "real").index(n) if n in ("train", "test", "real") else 9)
    paper = PAPER.get(env_id or "", {})
    header = ["arm", "seeds", *[f"{name} return" for name in ranges], "real / synthetic transitions",
              "gradient steps", *(["top action share"] if profiles else []), "paper (Table 2)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in ARMS:
        runs = results.get(arm, [])
        if not runs:
            continue
        cells = [arm, str(len(runs))]
        for name in ranges:
            vals = [r["eval"][name]["return"] for r in runs if name in r.get("eval", {})]
            cells.append(f"{np.mean(vals):.2f} ± {np.std(vals):.2f}" if vals else "n/a")
        first = runs[0]
        cells += [f"{first['real_transitions']:,} / {first['synthetic_transitions']:,}", f"{first['steps']:,}"]
        if profiles:
            known = [p for p in profiles.get(arm, []) if p is not None]
            tops = sorted({p["top_action"] for p in known})
            shares = [p["top_share"] for p in known]
            cells.append(f"{np.mean(shares):.3f}, lowest {min(shares):.3f} ({', '.join(tops)})" if known else "n/a")
        cells.append(paper.get(arm, "n/a"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Args:
    dataset: str
    """the real trajectory store"""
    synthetic_dataset: str
    """offline/augment.py's store for the 'w/ wm' arms"""
    arms: tuple[Literal["CQL", "CQL w/ wm", "IQL", "IQL w/ wm"], ...] = tuple(ARMS)
    """arms compared"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds per arm"""
    total_steps: int = 100_000
    """gradient steps of every run"""
    out: str = "runs/table2"
    """runs go to {out}/{arm}_s{seed}"""
    extra: str = ""
    """more flags for both scripts as one string, joined with = (--extra="--eval-episodes 20")"""
    jobs: int = 1
    """runs at the same time"""
    threads: int | None = None
    """torch threads per run (default: all, 1 with --jobs > 1)"""
    resume: bool = False
    """keep finished runs, continue the others from checkpoints"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: str = str(ROOT / "bench" / "RESULTS.md")
    """the results file"""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.jobs < 1:
        usage_error("--jobs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    args = parse_args(argv)

    def jobs():
        for seed in args.seeds:  # seeds outermost: an interrupted table has whole seeds of every arm
            for arm in args.arms:
                script, synthetic = ARMS[arm]
                folder = run_dir(args.out, arm, seed)
                if args.resume and read_result(folder, args.total_steps) is not None:
                    print(f"== {arm} seed {seed}: finished in {folder}, kept", flush=True)
                    continue
                cmd = [sys.executable, str(ROOT / "offline" / script), "--dataset", args.dataset, "--seed", str(seed),
                       "--total-steps", str(args.total_steps), "--output-dir", str(folder)]
                if synthetic:
                    cmd += ["--synthetic-dataset", args.synthetic_dataset]
                cmd += shlex.split(args.extra)
                if args.resume and (folder / "checkpoint" / "training_state.pt").is_file():
                    cmd.append("--resume")
                yield Job(f"{arm} seed {seed}", cmd, folder / "stdout.log")

    threads = args.threads if args.threads is not None else (1 if args.jobs > 1 else None)
    failed = run_jobs(jobs(), args.jobs, threads)
    results: dict[str, list[dict[str, Any]]] = {}
    profiles: dict[str, list[dict[str, Any] | None]] = {}
    for arm in args.arms:
        for seed in args.seeds:
            result = read_result(run_dir(args.out, arm, seed), args.total_steps)
            if result is not None:
                results.setdefault(arm, []).append(result)
                try:
                    profile = action_profile(run_dir(args.out, arm, seed), args.dataset)
                except Exception as e:  # a diagnostic: never lose the table of finished runs to it
                    print(f"warning: no action profile for {arm} seed {seed}: {e}", file=sys.stderr)
                    profile = None
                profiles.setdefault(arm, []).append(profile)
    env_id = next((r["env_id"] for runs in results.values() for r in runs), None)
    text = table(results, env_id, profiles)
    print(text)
    if failed:
        raise SystemExit(f"runs failed: {', '.join(failed)} (see their stdout.log); nothing written to "
                         f"{args.results_file}. Rerun with --resume.")
    if args.write_results:
        from dws_gym.hardware import describe_machine

        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python offline/table2.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
        with open(args.results_file, "a", encoding="utf-8") as f:
            f.write(f"\n## Offline RL with synthesized transitions, Table 2 at our budget: {env_id} ({date})\n\n"
                    f"Machine: {describe_machine()}  \nCommand: `{command}`  \n"
                    f"Real data `{args.dataset}`, synthetic `{args.synthetic_dataset}`; {args.total_steps:,} gradient "
                    f"steps per run whatever the data; seeds {' '.join(map(str, args.seeds))}; final evaluation "
                    "return, mean ± std (population) over seeds. The paper's column: 1M expert + 1M synthesized "
                    "transitions, its own training budget. Top action share: how often the final policy's most "
                    "likely action is the same one, on 1,024 real observations of the dataset (1.000: the same action "
                    f"on every one).\n\n{text}\n")
        print(f"appended to {args.results_file}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
