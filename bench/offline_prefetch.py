"""Offline gradient steps/s with minibatches read ahead (``--prefetch``) against reading each one in turn, and in
bf16 autocast against fp32 (``--dtype``).

A uniformly drawn minibatch of a million-frame store touches hundreds of frame files, mostly not in memory; read in
the learner's thread, that time adds to every gradient step. This runs ``offline/cql.py`` (or ``iql.py``) on the same
store for each ``--prefetch`` x ``--dtype`` pair, alternating in rounds so that load on a shared machine falls on all
of them, and reports the scripts' own steps/s (counted after the replay index is built).

    python bench/offline_prefetch.py --dataset data/coinrun-runner --steps 30 --rounds 2 --write-results
    python bench/offline_prefetch.py --dataset data/coinrun-runner --prefetch 2 --dtype fp32 bf16 --write-results
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from dream_env import write_results_section  # noqa: E402

from dws_gym.hardware import resolve_precision  # noqa: E402


@dataclass
class Args:
    dataset: str
    """the trajectory store the learner reads"""
    algorithm: Literal["cql", "iql"] = "cql"
    """offline/<algorithm>.py runs"""
    prefetch: tuple[int, ...] = (0, 2)
    """values of the scripts' --prefetch, a run each per round"""
    dtype: tuple[Literal["auto", "bf16", "fp32"], ...] = ("auto",)
    """values of the scripts' --dtype, a run each per round and --prefetch value"""
    steps: int = 30
    """gradient steps per run"""
    rounds: int = 2
    """repeats of the whole set, alternating the values"""
    batch_size: int = 256
    """minibatch size (the scripts' default for CQL)"""
    arch: Literal["impala", "nature"] = "impala"
    """the networks' trunk"""
    threads: int = 1
    """OMP / torch threads of each run"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: str = str(ROOT / "bench" / "RESULTS.md")
    """where --write-results appends"""


def run_once(args: Args, prefetch: int, out: Path, dtype: str = "auto") -> float:
    """One run of the learner; its steps/s as the script printed it at the last step."""
    cmd = [sys.executable, str(ROOT / "offline" / f"{args.algorithm}.py"), "--dataset", args.dataset,
           "--total-steps", str(args.steps), "--log-every", str(args.steps), "--eval-episodes", "0",
           "--batch-size", str(args.batch_size), "--arch", args.arch, "--prefetch", str(prefetch),
           "--dtype", dtype, "--output-dir", str(out), "--no-save-model"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    found = re.findall(r"SPS=([0-9.eE+-]+)", proc.stdout)
    if not found:
        raise SystemExit(f"no SPS= line in the output of {' '.join(cmd)}:\n{proc.stdout[-2000:]}")
    return float(found[-1])


def main(args: Args) -> str:
    """Run the rounds, print the table (append it with --write-results) and return it."""
    pairs = [(p, d) for p in args.prefetch for d in args.dtype]
    rates: dict[tuple[int, str], list[float]] = {pair: [] for pair in pairs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for p, d in pairs if r % 2 == 0 else reversed(pairs):
                rates[p, d].append(run_once(args, p, Path(tmp) / f"r{r}_p{p}_{d}", d))
                print(f"round {r + 1}, --prefetch {p} --dtype {d}: {rates[p, d][-1]:.3f} steps/s", flush=True)
    base = pairs[0]
    lines = ["| --prefetch | --dtype | gradient steps/s per round | mean | vs --prefetch "
             f"{base[0]} --dtype {base[1]} |", "|---|---|---|---|---|"]
    for (p, d), values in rates.items():
        ratio = np.mean(values) / np.mean(rates[base])
        lines.append(f"| {p} | {d} | {', '.join(f'{v:.3f}' for v in values)} | {np.mean(values):.3f} | {ratio:.2f}× |")
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        command = "python bench/offline_prefetch.py " + " ".join(sys.argv[1:])
        details = [f"`offline/{args.algorithm}.py`, {args.steps} gradient steps per run, batch {args.batch_size}, "
                   f"{args.arch} networks, {args.threads} thread(s), store {args.dataset}; --dtype auto resolved "
                   f"here: {resolve_precision('auto', 'cpu').reason}"]
        write_results_section(Path(args.results_file), "Offline learner: gradient steps/s by --prefetch and --dtype",
                              command, details, text)
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
