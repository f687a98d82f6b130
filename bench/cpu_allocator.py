"""A CPU dream step with glibc malloc's defaults and with freed memory kept (``dws_gym.cpu_allocator``).

The malloc setting is process-wide and one-way, so each measurement is a fresh process: this script runs itself as a
child, alternating the two settings for ``--rounds`` rounds (``DWS_GYM_MALLOC=default`` in the child's environment
for the defaults). Each child builds ``DreamVectorEnv(simulator, num_envs, device="cpu", dtype=..., compile=...)``
as a user would, steps it ``--warmup`` times (compilation), then times ``--steps`` steps of uniformly random actions
and counts the process's minor page faults over them (``getrusage``) and its peak resident memory (``VmHWM``).
Medians over rounds are reported, with the ratio of the two settings' step times.

    python bench/cpu_allocator.py --write-results
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from dream_env import write_results_section  # noqa: E402

from dws_gym.cpu_allocator import OPT_OUT_VARIABLE  # noqa: E402
from dws_gym.hardware import proc_status_bytes  # noqa: E402

SETTINGS = ("default", "kept")


@dataclass
class Args:
    simulator: str = str(ROOT / "dws_gym" / "assets" / "simulators" / "breakout")
    """saved simulator folder"""
    num_envs: int = 64
    """envs stepped as one batch"""
    threads: int = 2
    """torch threads"""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """stepping precision (auto: bf16 where the hardware has native bf16)"""
    compile: bool = True
    """DreamVectorEnv(compile=...)"""
    rounds: int = 3
    """rounds of one child process per setting; medians over them"""
    steps: int = 20
    """timed steps per child"""
    warmup: int = 3
    """untimed steps first (compilation)"""
    seed: int = 0
    """seed of the env and the actions"""
    child: Literal["default", "kept"] | None = None
    """internal: measure one setting in this process and print it as JSON"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: str = str(ROOT / "bench" / "RESULTS.md")
    """where --write-results appends"""


def measure(args: Args) -> dict[str, float | str]:
    """Time ``args.steps`` steps of a fresh dream env in this process, as it is configured."""
    from dws_gym.envs.dream import DreamVectorEnv

    torch.set_num_threads(args.threads)
    env = DreamVectorEnv(args.simulator, args.num_envs, device="cpu", dtype=args.dtype, compile=args.compile)
    env.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    for _ in range(args.warmup):
        env.step(rng.integers(0, env.single_action_space.n, args.num_envs))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(args.steps):
        env.step(rng.integers(0, env.single_action_space.n, args.num_envs))
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    try:
        peak = proc_status_bytes("VmHWM") / 1024**2
    except (OSError, KeyError):
        peak = float("nan")
    return {"step_ms": 1000.0 * seconds / args.steps, "faults_per_step": faults / args.steps, "peak_mib": peak,
            "allocator": env.metadata["cpu_allocator"], "precision": env.metadata["precision"]}


def run_child(args: Args, setting: str) -> dict[str, float | str]:
    """One fresh process measuring ``setting``."""
    env = {k: v for k, v in os.environ.items() if k != OPT_OUT_VARIABLE}
    if setting == "default":
        env[OPT_OUT_VARIABLE] = "default"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--simulator", args.simulator, "--num-envs",
           str(args.num_envs), "--threads", str(args.threads), "--dtype", args.dtype,
           "--compile" if args.compile else "--no-compile", "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--seed", str(args.seed), "--child", setting]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {setting} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args: Args) -> str:
    """Alternate the two settings in fresh processes, print the table (append it with --write-results)."""
    if args.child is not None:
        print(json.dumps(measure(args)))
        return ""
    results: dict[str, list[dict[str, float | str]]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for setting in SETTINGS:
            res = run_child(args, setting)
            results[setting].append(res)
            print(f"round {r + 1} {setting}: {res['step_ms']:.1f} ms/step, {res['faults_per_step']:,.0f} minor faults "
                  f"a step, peak {res['peak_mib']:.0f} MiB", file=sys.stderr)

    def med(setting: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in results[setting])

    base = med("default", "step_ms")
    lines = ["| malloc | step ms (median) | per round | transitions/s | minor page faults / step | peak resident MiB | "
             "speed-up |", "|---|---|---|---|---|---|---|"]
    for setting in SETTINGS:
        ms = med(setting, "step_ms")
        rounds = ", ".join(f"{float(x['step_ms']):.1f}" for x in results[setting])
        lines.append(f"| {results[setting][0]['allocator']} | {ms:.1f} | {rounds} | {1000 * args.num_envs / ms:,.0f} | "
                     f"{med(setting, 'faults_per_step'):,.0f} | {med(setting, 'peak_mib'):.0f} | {base / ms:.2f}× |")
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        command = "python bench/cpu_allocator.py " + " ".join(sys.argv[1:])
        details = [f"`{args.simulator}`, {args.num_envs} envs, {args.threads} torch threads, "
                   f"{results['kept'][0]['precision']}, compile {args.compile}; each row a fresh process per round "
                   f"({args.rounds} rounds, alternating), {args.warmup} warm-up and {args.steps} timed steps each"]
        write_results_section(Path(args.results_file), "Dream step: malloc's defaults against freed memory kept",
                              command, details, text)
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
