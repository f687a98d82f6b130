"""Trajectory-store benchmark: build a large store, sample clip windows, measure time and anonymous memory.

Builds a store of synthetic 64x64x3 episodes (150-250 steps; a random background per episode and a moving
block, so frames differ) under --root, then, in a fresh process so the numbers are not polluted by the build,
opens it and samples --clips windows of context + horizon frames in batches. Reports wall time, clips/s, bytes
on disk and anonymous RSS (RssAnon from /proc/self/status: memory the process itself allocated; pages of the
memory-mapped frame files are file-backed and reclaimable, so they are not counted) against the data size.

By default the store's frame files are evicted from the page cache before sampling (posix_fadvise DONTNEED on
those files only), so reads come from disk; --warm keeps the cache. The data is deleted afterwards unless --keep.

    python bench/store_memory.py --root /tmp/dws_store_bench                  # 1M frames (~12.3 GB)
    python bench/store_memory.py --root /tmp/s --frames 20000 --write-results # quick run, append to RESULTS.md
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from dws_gym.data import TrajectoryStore
from dws_gym.flags import usage_error
from dws_gym.hardware import describe_machine, proc_status_bytes

MiB = 1024**2
GiB = 1024**3


def disk_bytes(root: Path) -> int:
    """Bytes allocated on disk under ``root`` (st_blocks, not apparent size)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def build(args: Args) -> dict:
    """Write synthetic episodes until the store holds at least ``args.frames`` frames."""
    store = TrajectoryStore(args.root, create=True, durable=args.fsync)
    rng = np.random.default_rng(args.seed)
    size = args.size
    written = store.num_frames
    t0 = time.perf_counter()
    new_bytes = 0
    while written < args.frames:
        T = int(rng.integers(args.min_len, args.max_len + 1))
        frames = np.empty((T + 1, size, size, 3), np.uint8)
        frames[:] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # per-episode background
        pos = np.cumsum(rng.integers(-2, 3, (T + 1, 2)), axis=0) % (size - 8)  # a wandering 8x8 block
        color = rng.integers(0, 256, 3, dtype=np.uint8)
        for t, (y, x) in enumerate(pos):
            frames[t, y : y + 8, x : x + 8] = color
        term = np.zeros(T, bool)
        term[-1] = True
        store.add_episode(
            frames, rng.integers(0, 4, T), (rng.random(T) < 0.02).astype(np.float32), term, np.zeros(T, bool),
            env_id="Synthetic-v0", action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT"], policy="random",
        )
        written += T + 1
        new_bytes += frames.nbytes
    build_s = time.perf_counter() - t0
    return {"build_s": build_s, "build_mb_s": new_bytes / MiB / max(build_s, 1e-9), "built_frames": new_bytes}


def sample(args: Args) -> dict:
    """Open the store and sample clips; runs in a fresh process (see main)."""
    anon_start = proc_status_bytes("RssAnon")
    t0 = time.perf_counter()
    store = TrajectoryStore(args.root)
    clips = store.clips(args.context, args.horizon)
    open_s = time.perf_counter() - t0
    anon_open = proc_status_bytes("RssAnon")
    if not args.warm:
        for ep in store.episode_ids():
            fd = os.open(store.root / "episodes" / f"ep_{ep:09d}" / "obs.npy", os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    rng = np.random.default_rng(args.seed + 1)
    peak_anon = anon_open
    peak_file = 0
    done = 0
    checked = False
    t0 = time.perf_counter()
    while done < args.clips:
        n = min(args.batch, args.clips - done)
        batch = clips.sample(n, rng)
        if not checked:  # one spot check that a sampled clip is what the episode holds
            ep, s, m = int(batch["episode_id"][0]), int(batch["start"][0]), int(batch["mask"][0].sum())
            assert np.array_equal(batch["frames"][0, :m], store.episode(ep)["obs"][s : s + m])
            checked = True
        peak_anon = max(peak_anon, proc_status_bytes("RssAnon"))
        peak_file = max(peak_file, proc_status_bytes("RssFile"))
        done += n
        del batch
    sample_s = time.perf_counter() - t0
    return {
        "episodes": store.num_episodes,
        "frames": store.num_frames,
        "data_bytes": store.num_frames * int(np.prod(store.meta(store.episode_ids()[0]).obs_shape)),
        "windows": len(clips),
        "open_s": open_s,
        "sample_s": sample_s,
        "clips_per_s": args.clips / sample_s,
        "anon_start": anon_start,
        "anon_open": anon_open,
        "anon_peak": peak_anon,
        "anon_end": proc_status_bytes("RssAnon"),
        "file_peak": peak_file,
        "batch_bytes": args.batch * (args.context + args.horizon) * args.size * args.size * 3,
    }


HEADER = (
    "| date | frames | episodes | data GiB | disk GiB | build s (MB/s) | open s | clips (K+H) x batch | cache "
    "| sample s | clips/s | RssAnon start / open / peak / end MiB | peak anon / data | RssFile peak MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(args: Args, b: dict, s: dict, disk: int, date: str) -> str:
    build = f"{b['build_s']:.0f} ({b['build_mb_s']:.0f})" if b.get("built_frames") else "reused"
    anon = " / ".join(f"{s[k] / MiB:.0f}" for k in ("anon_start", "anon_open", "anon_peak", "anon_end"))
    return (
        f"| {date} | {s['frames']:,} | {s['episodes']:,} | {s['data_bytes'] / GiB:.2f} | {disk / GiB:.2f} "
        f"| {build} | {s['open_s']:.1f} | {args.clips:,} ({args.context}+{args.horizon}) x {args.batch} "
        f"| {'warm' if args.warm else 'cold'} | {s['sample_s']:.1f} | {s['clips_per_s']:.0f} | {anon} "
        f"| {s['anon_peak'] / s['data_bytes']:.4f} | {s['file_peak'] / MiB:.0f} |"
    )


@dataclass
class Args:
    root: Path = Path("/tmp/dws_store_bench")
    """store folder (made if missing)"""
    frames: int = 1_000_000
    """build until the store holds this many frames"""
    size: int = 64
    """frame height = width"""
    min_len: int = 150
    """shortest episode (steps)"""
    max_len: int = 250
    """longest episode (steps)"""
    clips: int = 10_000
    """clip windows to sample"""
    context: int = 4
    """context frames K"""
    horizon: int = 16
    """target frames H"""
    batch: int = 250
    """clips per sample() call"""
    seed: int = 0
    """seeds the episodes and the windows"""
    reuse: bool = False
    """keep an existing store at --root and only top it up"""
    keep: bool = False
    """do not delete the store afterwards"""
    fsync: bool = True
    """write durably (--no-fsync: faster, not crash-safe)"""
    warm: bool = False
    """sample with the page cache warm (default: evicted)"""
    write_results: bool = False
    """append the row to --results-file"""
    results_file: Path = Path(__file__).resolve().parent / "RESULTS.md"
    """the results file"""
    sample_only: bool = False
    """internal: run only the sampling measurement (the bench's child process)"""


def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv, description=__doc__)

    if args.sample_only:
        print(json.dumps(sample(args)))
        return
    if args.root.exists() and not args.reuse:
        if not (args.root / "store.json").exists():
            usage_error(f"{args.root} exists and is not a trajectory store; pick another --root")
        shutil.rmtree(args.root)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    try:
        b = build(args)
        print(f"built: {b}", file=sys.stderr)
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--sample-only"], check=True, capture_output=True, text=True
        )
        s = json.loads(child.stdout.strip().splitlines()[-1])
        disk = disk_bytes(args.root)
    finally:
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    line = row(args, b, s, disk, date)
    print(HEADER)
    print(line)
    if args.write_results:
        with open(args.results_file, "a", encoding="utf-8") as f:
            f.write(
                f"\n## Trajectory store: memory-mapped clip sampling ({date})\n\n"
                f"Machine: {describe_machine()}  \nCommand: `{command}`  \n"
                f"RssAnon = anonymous resident memory of the sampling process (frames are file-backed memory maps); "
                f"one batch of clips is {s['batch_bytes'] / MiB:.0f} MiB.\n\n{HEADER}\n{line}\n"
            )
        print(f"appended to {args.results_file}", file=sys.stderr)


if __name__ == "__main__":
    main()
