"""Run a batch of command-line jobs a few at a time: what the comparison and ablation runners share.

Each job's output goes to its own log file (or the console); a failed job is reported with the end of its log and
the others go on, so a long comparison is never lost to one bad run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["Job", "run_jobs"]


@dataclass
class Job:
    """One command to run.

    Attributes:
        name: what progress lines and the failure list call it.
        command: the argv.
        log: file its stdout and stderr are appended to (its folder is created); ``None``: the console.
    """

    name: str
    command: list[str]
    log: Path | None = None


def _tail(path: Path | None, n: int = 3000) -> str:
    if path is None:
        return "(output above)"
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_jobs(jobs: Iterable[Job], parallel: int = 1, threads: int | None = None) -> list[str]:
    """Run ``jobs`` in order, at most ``parallel`` at a time; return the names of those that failed.

    Args:
        jobs: the jobs (a generator works: each is built just before it starts, e.g. after the previous one's files
            are settled).
        parallel: jobs running at once.
        threads: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of every job (``None``: inherited).
    """
    if int(parallel) != parallel or parallel < 1:
        raise ValueError(f"parallel must be a positive integer, got {parallel!r}")
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    running: list[tuple[Job, subprocess.Popen, IO[Any] | None, float]] = []
    failed: list[str] = []

    def reap(block_until: int) -> None:
        while len(running) > block_until:
            for item in list(running):
                job, proc, log, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if log is not None:
                    log.close()
                if proc.returncode == 0:
                    print(f"== {job.name}: done in {time.time() - t0:.0f} s", flush=True)
                else:
                    failed.append(job.name)
                    where = f"end of {job.log}" if job.log is not None else "see above"
                    print(f"== {job.name}: FAILED (exit {proc.returncode}); {where}:\n{_tail(job.log)}", flush=True)
            if len(running) > block_until:
                time.sleep(0.5)

    for job in jobs:
        reap(parallel - 1)
        log = None
        if job.log is not None:
            job.log.parent.mkdir(parents=True, exist_ok=True)
            log = open(job.log, "a")
            log.write(f"\n$ {shlex.join(job.command)}\n")
            log.flush()
        print(f"== {job.name}: {shlex.join(job.command)}" + (f"  (output: {job.log})" if job.log else ""), flush=True)
        proc = subprocess.Popen(job.command, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
        running.append((job, proc, log, time.time()))
    reap(0)
    return failed
