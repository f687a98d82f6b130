"""Dream-env throughput: transitions/s of DreamVectorEnv next to the real ALE vector env, in the same run.

For every ``--num-envs`` value the bench builds ``DreamVectorEnv(sim, num_envs, device=..., sampling_steps=...)``,
resets it, runs ``--warmup`` steps, then times ``--steps`` steps of uniformly random actions (numpy observations
back on the host, as a gymnasium user gets them; CUDA is synchronised around the timed loop). Transitions/s is
``num_envs * steps / seconds``. The real env, ``make_real_env(<the simulator's game>, num_envs,
num_threads=--ale-threads)``, is timed the same way right after it. Sizes grow until a step takes longer than
``--max-seconds-per-step`` or memory runs out (reported, not raised).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over building, resetting and stepping the env (stats reset
per row; the simulator's weights included); on the CPU the process's peak resident memory above its resident
memory before the row (the kernel's high-water mark ``VmHWM``, reset per row through ``/proc/self/clear_refs``; where
that is not possible, the growth of ``ru_maxrss``, which only shows new all-time peaks).

FLOPs: one ``Simulator.step`` at ``--flops-num-envs`` envs is counted with ``torch.utils.flop_counter``
(matmuls, convolutions and attention, attention counted dense including its masked-out blocks; elementwise ops are
not counted), divided by the env count. Achieved FLOP/s = FLOPs/transition x transitions/s; on CUDA also as a
fraction of ``--peak-tflops`` (default 989: the dense bf16 tensor-core peak of an H100 / H200 SXM).

Without ``--simulator`` the simulator is freshly initialised with the default architecture (``FlowConfig()``
defaults: pixel space, patch 4, width 128, 3 layers, K=4, 4 Euler steps; ``RewardConfig()`` defaults) for Breakout's
4 actions, its start clips taken from a quick real Breakout reset. Its weights are untrained; throughput does not
depend on the weights (only on the architecture, the batch and how often episodes end, reported as "simulated").

    python bench/dream_env.py --num-envs 1 4 16 64 --threads 2 --ale-threads 2 --write-results
    python bench/dream_env.py --device cuda --dtype bf16 --num-envs 64 256 1024 4096 --write-results
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dws_gym.envs.dream import DreamVectorEnv, resolve_device  # noqa: E402
from dws_gym.envs.real import make_real_env, parse_env_id  # noqa: E402
from dws_gym.models.flow import FlowConfig, FlowWorldModel  # noqa: E402
from dws_gym.models.reward import RewardConfig, RewardHead  # noqa: E402
from dws_gym.simulator import Simulator, SimulatorConfig  # noqa: E402

__all__ = ["Row", "build_default_simulator", "count_step_flops", "format_table", "main", "prepare_simulator"]

MiB = 1024**2
DEFAULT_ENV_ID = "ALE/Breakout-v5"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Row:
    """One ``num_envs`` of the sweep.

    Attributes:
        num_envs: Envs stepped as one batch.
        steps: Dream steps timed (0 when the row failed before timing).
        dream_tps: Dream transitions/s (``num_envs * steps / seconds``); ``nan`` when it failed.
        seconds_per_step: Wall seconds of one dream ``step`` call.
        simulated: Share of env-steps the simulator actually generated (the rest were NEXT_STEP restarts).
        real_tps: Real env transitions/s in the same run (``nan`` when not measured).
        peak_memory: Bytes (see ``memory_kind``).
        flops_per_transition: Counted FLOPs of one transition (the same count for every row).
        note: Why the sweep stopped here, if it did.
    """

    num_envs: int
    steps: int = 0
    dream_tps: float = float("nan")
    seconds_per_step: float = float("nan")
    simulated: float = float("nan")
    real_tps: float = float("nan")
    peak_memory: float = float("nan")
    flops_per_transition: float = float("nan")
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Dream transitions/s over real transitions/s (``nan`` if either is missing)."""
        return self.dream_tps / self.real_tps if self.real_tps > 0 else float("nan")

    @property
    def flops_per_s(self) -> float:
        """Achieved FLOP/s of the dream step (counted FLOPs x transitions/s)."""
        return self.flops_per_transition * self.dream_tps


# ================================================================================================== machine
def machine() -> str:
    """CPU model, cores, RAM, GPU (if visible) and torch version, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.0f} GiB RAM"
    except (ValueError, OSError):
        mem = ""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{mem}{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} CPU threads), {platform.system()} {platform.release()}")


# ================================================================================================== simulator
def _start_clips(env_id: str, count: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``count`` real clips of ``k`` frames: a reset then ``k - 1`` random steps; frames uint8 (S, k, 64, 64, 3)."""
    env = make_real_env(env_id, count, num_threads=1)
    try:
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        frames, actions = [obs.copy()], []
        for _ in range(k - 1):
            a = rng.integers(0, env.single_action_space.n, count)
            obs, *_ = env.step(a)
            frames.append(obs.copy())
            actions.append(a)
        meanings = env.get_action_meanings()
    finally:
        env.close()
    acts = np.stack(actions, 1) if actions else np.zeros((count, 0), np.int64)
    return np.stack(frames, 1), acts.astype(np.int64), meanings


def build_default_simulator(
    *, tiny: bool = False, sampling_steps: int | None = None, num_starts: int | None = None, seed: int = 0
) -> Simulator:
    """A freshly initialised simulator of the default architecture for Breakout (untrained weights).

    Args:
        tiny: A 1-layer, width-96 backbone and a small reward head instead (for fast tests).
        sampling_steps: Euler steps per env step stored in the config (``None``: ``FlowConfig``'s default, 4).
        num_starts: Real start clips taken from a quick Breakout reset (``None``: 8, or 2 when ``tiny``).
        seed: Seeds the weights and the start clips.
    """
    torch.manual_seed(seed)
    steps = FlowConfig.sampling_steps if sampling_steps is None else int(sampling_steps)
    num_starts = (2 if tiny else 8) if num_starts is None else int(num_starts)
    frames, actions, meanings = _start_clips(DEFAULT_ENV_ID, num_starts, FlowConfig.context_frames, seed)
    n = len(meanings)
    if tiny:
        flow = FlowConfig(num_actions=n, patch_size=4, num_heads=2, head_dim=48, num_layers=1, ffn_dim=64, freq_dim=16,
                          text_dim=16, cond_dim=16, sampling_steps=steps)
        head = RewardConfig(context_frames=flow.context_frames, num_actions=n, dim=16, depth=1, num_heads=2)
    else:
        flow = FlowConfig(num_actions=n, sampling_steps=steps)
        head = RewardConfig(context_frames=flow.context_frames, num_actions=n)
    config = SimulatorConfig(env_id=DEFAULT_ENV_ID, action_meanings=list(meanings),
                             context_frames=flow.context_frames, sampling_steps=steps)
    return Simulator(config, FlowWorldModel(flow), RewardHead(head), frames, actions)


def prepare_simulator(sim: Simulator, device: torch.device, dtype: str, bf16_mode: str) -> Simulator:
    """Move ``sim`` to ``device`` for inference: parameters frozen, and in bf16 ``cast`` mode the backbone and
    reward head cast to bfloat16 (what ``FlowWorldModel.from_pretrained(dtype=)`` does; frame states stay float32).
    ``autocast`` mode keeps float32 weights (the timed calls then run under ``torch.autocast``)."""
    sim.to(device)
    for p in [*sim.world_model.parameters(), *sim.reward_head.parameters()]:
        p.requires_grad_(False)  # inference only (and torch's flop counter needs it under no_grad)
    if dtype == "bf16" and bf16_mode == "cast":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # diffusers warns that casting a Wan model keeps no fp32 modules; the backbone is built for it.
            sim.world_model.transformer.to(torch.bfloat16)
        sim.reward_head.to(torch.bfloat16)
    return sim


def _precision(device: torch.device, dtype: str, bf16_mode: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16" and bf16_mode == "autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ================================================================================================== FLOPs
def _cpu_sdpa_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args: Any,
                    out_shape: Any = None, **kwargs: Any) -> int:
    # torch's counter knows the CUDA attention kernels only; the CPU kernel does the same two matmuls.
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_step_flops(sim: Simulator, num_envs: int, *, sampling_steps: int | None = None,
                     precision: contextlib.AbstractContextManager | None = None) -> float:
    """Counted FLOPs of one transition: one ``sim.step`` on ``num_envs`` start clips, divided by ``num_envs``."""
    from torch.utils.flop_counter import FlopCounterMode

    idx = np.arange(num_envs) % sim.start_frames.shape[0]
    state = sim.init_state(sim.start_frames[idx], sim.start_actions[idx])
    actions = torch.zeros(num_envs, dtype=torch.long)
    mapping: dict[Any, Any] = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    with precision or contextlib.nullcontext(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        sim.step(state, actions, torch.Generator().manual_seed(0), steps=sampling_steps)
    return counter.get_total_flops() / num_envs


# ================================================================================================== memory
class _PeakMemory:
    """Peak memory of one row: CUDA allocator peak, or CPU resident-set high-water mark above the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda"
        if device.type != "cuda":
            self.kind = "vmhwm" if self._reset_hwm() else "ru_maxrss"

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # "5" resets the peak resident set size to the current one (Linux)
            return True
        except OSError:
            return False

    @staticmethod
    def _maxrss() -> int:
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def start(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "vmhwm":
            self._reset_hwm()
            self._base = self._status("VmRSS")
        else:
            self._base = self._maxrss()

    def peak(self) -> float:
        """Bytes since :meth:`start`."""
        if self.kind == "cuda":
            return float(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "vmhwm":
            return float(self._status("VmHWM") - self._base)
        return float(self._maxrss() - self._base)

    @property
    def description(self) -> str:
        return {
            "cuda": "torch.cuda.max_memory_allocated while building, resetting and stepping the dream env "
                    "(the simulator's weights included)",
            "vmhwm": "peak resident memory of the process above its resident memory before the row "
                     "(VmHWM, reset per row via /proc/self/clear_refs)",
            "ru_maxrss": "growth of the process's all-time peak RSS (ru_maxrss) during the row: a lower bound",
        }[self.kind]


# ================================================================================================== timing
def _timed(step: Callable[[int], Any], *, steps: int, min_seconds: float, budget: float,
           sync: Callable[[], None]) -> tuple[int, float]:
    """Run ``step(i)`` at least ``steps`` times and ``min_seconds`` long, stopping early (after one step) once
    ``budget`` seconds have passed. Returns ``(steps run, seconds)``."""
    sync()
    t0 = time.perf_counter()
    done = 0
    while True:
        step(done)
        done += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= budget or (done >= steps and elapsed >= min_seconds):
            break
    sync()
    return done, time.perf_counter() - t0


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(err).lower()


def measure_dream(sim: Simulator, num_envs: int, args: argparse.Namespace, device: torch.device,
                  memory: _PeakMemory) -> Row:
    """Time one ``num_envs`` of the dream env; OOM is caught and reported in ``Row.note``."""
    row = Row(num_envs)
    rng = np.random.default_rng(args.seed)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    env = None
    memory.start()
    try:
        with _precision(device, args.dtype, args.bf16_mode):
            env = DreamVectorEnv(sim, num_envs, device=device, sampling_steps=args.sampling_steps,
                                 output=args.output)
            env.reset(seed=args.seed)
            n_act = env.single_action_space.n
            plan = rng.integers(0, n_act, (max(args.steps, 1), num_envs))
            for i in range(args.warmup):
                env.step(plan[i % len(plan)])
            restarted = [0]

            def step(i: int) -> None:
                *_, info = env.step(plan[i % len(plan)])
                if "_start_id" in info:  # NEXT_STEP restarts: those envs were not simulated this step
                    restarted[0] += int(np.asarray(info["_start_id"]).sum())

            steps, seconds = _timed(step, steps=args.steps, min_seconds=0.0, budget=args.time_budget, sync=sync)
        row.steps = steps
        row.dream_tps = num_envs * steps / seconds
        row.seconds_per_step = seconds / steps
        row.simulated = 1.0 - restarted[0] / (num_envs * steps)
        row.peak_memory = memory.peak()
    except (RuntimeError, MemoryError) as err:
        if not _is_oom(err):
            raise
        row.peak_memory = memory.peak()
        row.note = f"out of memory ({type(err).__name__})"
    finally:
        if env is not None:
            env.close()
        env = None  # drop the last reference before collecting
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def measure_real(env_id: str, num_envs: int, args: argparse.Namespace) -> float:
    """Transitions/s of the real vector env (random actions, NEXT_STEP autoreset, the same step count)."""
    kwargs: dict[str, Any] = {}
    if parse_env_id(env_id)[0] == "ale":
        kwargs["num_threads"] = args.ale_threads
    env = make_real_env(env_id, num_envs, **kwargs)
    try:
        env.reset(seed=args.seed)
        rng = np.random.default_rng(args.seed + 1)
        plan = rng.integers(0, env.single_action_space.n, (64, num_envs))
        for i in range(args.warmup):
            env.step(plan[i % len(plan)])
        steps, seconds = _timed(lambda i: env.step(plan[i % len(plan)]), steps=args.steps,
                                min_seconds=args.real_min_seconds, budget=max(args.time_budget,
                                                                              args.real_min_seconds),
                                sync=lambda: None)
    finally:
        env.close()
    return num_envs * steps / seconds


# ================================================================================================== report
def _si(x: float, unit: str = "") -> str:
    if not np.isfinite(x):
        return "n/a"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}".strip()


def _num(x: float, fmt: str) -> str:
    return format(x, fmt) if np.isfinite(x) else "n/a"


def format_table(rows: Sequence[Row], *, peak_flops: float | None = None) -> str:
    """The markdown table of a sweep; ``peak_flops`` (FLOP/s) adds a "% of peak" column."""
    cols = ["num_envs", "steps timed", "dream transitions/s", "s / dream step", "simulated", "real ALE transitions/s",
            "dream / real", "peak memory MiB", "FLOPs / transition", "achieved FLOP/s"]
    if peak_flops:
        cols.append("% of peak FLOP/s")
    cols.append("note")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [str(r.num_envs), str(r.steps), _num(r.dream_tps, ",.1f"), _num(r.seconds_per_step, ".3f"),
                 _num(100 * r.simulated, ".1f") + ("%" if np.isfinite(r.simulated) else ""),
                 _num(r.real_tps, ",.0f"), _num(r.ratio, ".4g"), _num(r.peak_memory / MiB, ",.0f"),
                 _si(r.flops_per_transition), _si(r.flops_per_s)]
        if peak_flops:
            cells.append(_num(100 * r.flops_per_s / peak_flops, ".2f"))
        cells.append(r.note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ================================================================================================== main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--simulator", default=None, help="saved simulator folder (default: fresh default architecture)")
    p.add_argument("--tiny", action="store_true", help="a tiny fresh simulator instead of the default one (tests)")
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096])
    p.add_argument("--steps", type=int, default=20, help="dream / real steps timed per num_envs")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--time-budget", type=float, default=60.0,
                   help="stop timing a row after this many seconds (at least one step is timed)")
    p.add_argument("--real-min-seconds", type=float, default=1.0, help="time the real env at least this long")
    p.add_argument("--max-seconds-per-step", type=float, default=30.0,
                   help="stop growing num_envs once one dream step takes longer")
    p.add_argument("--sampling-steps", type=int, default=None, help="Euler steps per env step (default: sim's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:<i>")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--bf16-mode", choices=["cast", "autocast"], default="cast",
                   help="bf16: cast the weights (default) or run under torch.autocast with float32 weights")
    p.add_argument("--output", choices=["numpy", "torch"], default="numpy", help="DreamVectorEnv output type")
    p.add_argument("--flops-num-envs", type=int, default=4, help="envs of the step whose FLOPs are counted")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="peak dense TFLOP/s for the %% of peak column on CUDA (989: H100/H200 SXM bf16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--ale-threads", type=int, default=os.cpu_count() or 1, help="ALE emulator threads")
    p.add_argument("--real-env-id", default=None, help="real env to compare with (default: the simulator's)")
    p.add_argument("--no-real", action="store_true", help="skip the real env")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="free text for the results section (e.g. shared CPU)")
    p.add_argument("--write-results", action="store_true", help="append a section to --results-file")
    p.add_argument("--results-file", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.num_envs):
        p.error(f"--num-envs must be positive integers, got {args.num_envs}")
    if args.steps < 1 or args.warmup < 0 or args.flops_num_envs < 1:
        p.error("--steps and --flops-num-envs must be >= 1 and --warmup >= 0")
    if args.simulator is not None and args.tiny:
        p.error("--tiny builds a fresh simulator; do not combine it with --simulator")
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the sweep, print the table (and append it to the results file with ``--write-results``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.dtype == "bf16" and device.type != "cuda":
        print("note: bf16 on the CPU runs, but CPU bf16 speed says nothing about a GPU", file=sys.stderr)

    if args.simulator is not None:
        sim = Simulator.from_pretrained(args.simulator, device="cpu")
        what = f"simulator `{args.simulator}`"
    else:
        sim = build_default_simulator(tiny=args.tiny, sampling_steps=args.sampling_steps, seed=args.seed)
        what = (f"fresh {'TINY' if args.tiny else 'default-architecture'} simulator (untrained weights; throughput "
                "does not depend on the weights)")
    prepare_simulator(sim, device, args.dtype, args.bf16_mode)
    wm_params = sum(p.numel() for p in sim.world_model.parameters())
    rh_params = sum(p.numel() for p in sim.reward_head.parameters())
    steps = sim.config.sampling_steps if args.sampling_steps is None else args.sampling_steps
    real_id = args.real_env_id or sim.config.env_id
    wm_cfg = sim.world_model.config
    arch = (f"{wm_cfg.space} space, patch {wm_cfg.patch_size}, width {wm_cfg.width}, depth {wm_cfg.num_layers}, "
            f"K={sim.context_frames}") if hasattr(wm_cfg, "width") else type(sim.world_model).__name__
    desc = (f"{what}: {arch}; world model {wm_params / 1e6:.2f}M + reward head {rh_params / 1e6:.2f}M parameters; "
            f"{steps} Euler steps per env step; {args.dtype}"
            f"{' (' + args.bf16_mode + ')' if args.dtype == 'bf16' else ''} on {device}; output={args.output}")
    print(desc, file=sys.stderr)

    flops = count_step_flops(sim, args.flops_num_envs, sampling_steps=args.sampling_steps,
                             precision=_precision(device, args.dtype, args.bf16_mode))
    print(f"counted FLOPs / transition: {_si(flops)} (at {args.flops_num_envs} envs)", file=sys.stderr)

    memory = _PeakMemory(device)
    rows: list[Row] = []
    for n in args.num_envs:
        row = measure_dream(sim, n, args, device, memory)
        row.flops_per_transition = flops
        if not row.note and not args.no_real:
            row.real_tps = measure_real(real_id, n, args)
        if not row.note and row.seconds_per_step > args.max_seconds_per_step:
            row.note = f"stopped: a step took {row.seconds_per_step:.1f} s > {args.max_seconds_per_step} s"
        rows.append(row)
        print(f"num_envs {n}: dream {row.dream_tps:,.1f}/s, real {row.real_tps:,.0f}/s {row.note}", file=sys.stderr)
        if row.note:
            break

    peak = args.peak_tflops * 1e12 if device.type == "cuda" else None
    table = format_table(rows, peak_flops=peak)
    print(table)
    if args.write_results:
        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        given = sys.argv[1:] if argv is None else list(argv)
        command = "python bench/dream_env.py " + " ".join(shlex.quote(a) for a in given)
        peak_line = (f" % of peak against {args.peak_tflops:g} TFLOP/s (dense bf16 of an H100 / H200 SXM)."
                     if peak else "")
        real_line = ("real env not measured" if args.no_real else
                     f"real env: `make_real_env({real_id!r}, num_envs, num_threads={args.ale_threads})`, random "
                     f"actions, at least {args.real_min_seconds:g} s per row")
        with open(args.results_file, "a", encoding="utf-8") as f:
            f.write(
                f"\n## Dream env throughput: DreamVectorEnv vs the real env ({date})\n\n"
                f"Machine: {machine()}  \nCommand: `{command}`  \n"
                f"Simulator: {desc}.  \n"
                f"Dream: random actions, NEXT_STEP autoreset (\"simulated\" = env-steps the simulator generated; the "
                f"rest were restarts), {args.warmup} warm-up steps, up to {args.time_budget:g} s timed per row; "
                f"{real_line}.  \n"
                f"Peak memory: {memory.description}.  \n"
                f"FLOPs: one `Simulator.step` at {args.flops_num_envs} envs counted with torch.utils.flop_counter "
                f"(matmuls, convolutions, attention dense incl. masked blocks; elementwise ops not counted).{peak_line}"
                + (f"  \nNote: {args.note}" if args.note else "")
                + f"\n\n{table}\n"
            )
        print(f"appended to {args.results_file}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
