"""Dream-env throughput: transitions/s of DreamVectorEnv next to the real ALE vector env, in the same run.

For every ``--num-envs`` value and every variant (``--dtype`` x ``--compile`` x ``--rolling-cache``) the bench builds
``DreamVectorEnv(sim, num_envs, device=..., dtype=..., sampling_steps=...)``, resets it, runs ``--warmup`` steps, then
times ``--steps`` steps of uniformly random actions (numpy observations back on the host, as a gymnasium user gets
them; CUDA is synchronised around the timed loop). Transitions/s is ``num_envs * steps / seconds``. The real env,
``make_real_env(<the simulator's game>, num_envs, num_threads=--ale-threads)``, is timed once per ``num_envs`` in the
same run, right after the dream rows. Sizes grow until a step takes longer than ``--max-seconds-per-step`` or memory
runs out (reported, not raised).

Precision: ``--dtype fp32 auto`` (the default) times both; ``auto`` is bf16 where the hardware has native bf16
(CUDA; CPUs with AMX / AVX512-BF16, see ``dws_gym.hardware``), else fp32. The bf16 path is the simulator's own
(``Simulator.set_precision``: weights cast to bf16); ``--bf16-mode autocast`` instead keeps float32 weights and runs
each step under ``torch.autocast`` (for comparing the two). Every run prints the CPU model and the path that ran.

``--rolling-cache both`` adds rows without the rolling cache of the reward head's context tokens
(``DreamVectorEnv(rolling_cache=False)``: every step embeds all ``K + 1`` frames), for comparison; the default keeps
it, as the env does.

``--compile on`` (``both`` for eager and compiled rows) wraps the world model's network call in
``torch.compile`` (``Simulator.compile``): ``denoise`` of the U-Net (its sampling after the noise draw),
``_network`` (the transformer call) of the flow backbone, and the reward head's two halves. Compilation
happens in the warm-up steps, which are not timed.

FLOPs: one steady-state ``env.step`` (after the warm-up, at the row's ``num_envs``) is counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention, attention counted dense including
its masked-out blocks; elementwise ops and norms are not counted) and divided by ``num_envs``, so restarted envs
(which cost nothing) lower it as they lower the work. Achieved FLOP/s = FLOPs/transition x transitions/s; with a
peak (``--peak-tflops``, default 989 on CUDA: the dense bf16 tensor-core peak of an H100 / H200 SXM) also as a
percentage of it.

``--synthesize N`` estimates, from every timed row, how long generating ``N`` transitions would take on this
machine (``N / transitions/s``; the real env's time next to it).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over building, resetting and stepping the env (stats reset
per row; the simulator's weights included); on the CPU the process's peak resident memory above its resident
memory before the row (the kernel's high-water mark ``VmHWM``, reset per row through ``/proc/self/clear_refs``; where
that is not possible, the growth of ``ru_maxrss``, which only shows new all-time peaks).

Without ``--simulator`` the simulator is freshly initialised with the default architecture of ``--backbone``
(``unet``: ``UNetConfig()`` defaults, 1 Euler step; ``flow``: ``FlowConfig()`` defaults; ``RewardConfig()`` head)
for Breakout's 4 actions, its start clips taken from a quick real Breakout reset. Its weights are untrained;
throughput does not depend on the weights (only on the architecture, the batch and how often episodes end, reported
as "simulated").

    python bench/dream_env.py --num-envs 64 --threads 2 --ale-threads 2 --synthesize 1000000 --write-results
    python bench/dream_env.py --device cuda --dtype bf16 --compile both --num-envs 1024 4096 --write-results
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import gc
import os
import resource
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

from dws_gym.cpu_allocator import keep_freed_memory
from dws_gym.envs.dream import DreamVectorEnv, resolve_device
from dws_gym.envs.real import make_real_env, parse_env_id
from dws_gym.flags import usage_error
from dws_gym.hardware import cpu_model, describe_machine, proc_status_bytes, resolve_precision
from dws_gym.models.flow_config import FlowConfig
from dws_gym.models.reward import RewardConfig, RewardHead
from dws_gym.models.unet import UNetConfig, UNetWorldModel, unet_flops_per_frame
from dws_gym.simulator import Simulator, SimulatorConfig

__all__ = ["Row", "Variant", "build_default_simulator", "count_step_flops", "format_table", "main",
           "write_results_section"]

MiB = 1024**2
DEFAULT_ENV_ID = "ALE/Breakout-v5"
BACKBONES = ("unet", "flow")
H100_H200_BF16_TFLOPS = 989.0


@dataclass(frozen=True)
class Variant:
    """How the dream env of a row runs: requested dtype, compiled or not, rolling head-token cache or not."""

    dtype: str
    compiled: bool = False
    cached: bool = True


@dataclass
class Row:
    """One ``num_envs`` x variant of the sweep.

    Attributes:
        num_envs: Envs stepped as one batch.
        precision: ``"fp32"`` or ``"bf16"``, what ran (``auto`` resolved).
        requested: The ``--dtype`` asked for (``"auto"``, ``"bf16"``, ``"fp32"``).
        compiled: Whether the world model's network call was ``torch.compile``-d.
        cached: Whether the env kept the reward head's context tokens across steps (``rolling_cache``).
        steps: Dream steps timed (0 when the row failed before timing).
        dream_tps: Dream transitions/s (``num_envs * steps / seconds``); ``nan`` when it failed.
        seconds_per_step: Wall seconds of one dream ``step`` call.
        simulated: Share of env-steps the simulator actually generated (the rest were NEXT_STEP restarts).
        real_tps: Real env transitions/s in the same run (``nan`` when not measured).
        peak_memory: Bytes (see ``memory_kind``).
        flops_per_transition: Counted FLOPs of one steady-state env step at ``num_envs``, divided by ``num_envs``.
        synthesize_seconds: Estimated seconds for ``--synthesize`` transitions at ``dream_tps`` (``nan`` if unset).
        note: Why the sweep stopped here, if it did.
    """

    num_envs: int
    precision: str = "fp32"
    compiled: bool = False
    cached: bool = True
    requested: str = ""
    steps: int = 0
    dream_tps: float = float("nan")
    seconds_per_step: float = float("nan")
    simulated: float = float("nan")
    real_tps: float = float("nan")
    peak_memory: float = float("nan")
    flops_per_transition: float = float("nan")
    synthesize_seconds: float = float("nan")
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
    *, backbone: str = "unet", tiny: bool = False, sampling_steps: int | None = None, num_starts: int | None = None,
    seed: int = 0,
) -> Simulator:
    """A freshly initialised simulator of the default architecture for Breakout (untrained weights).

    Args:
        backbone: ``"unet"`` (``UNetConfig()`` defaults) or ``"flow"`` (``FlowConfig()`` defaults).
        tiny: A very small backbone and reward head instead (for fast tests).
        sampling_steps: Euler steps per env step stored in the config (``None``: the backbone config's default).
        num_starts: Real start clips taken from a quick Breakout reset (``None``: 8, or 2 when ``tiny``).
        seed: Seeds the weights and the start clips.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    torch.manual_seed(seed)
    num_starts = (2 if tiny else 8) if num_starts is None else int(num_starts)
    if backbone == "unet":
        steps = UNetConfig.sampling_steps if sampling_steps is None else int(sampling_steps)
        k = UNetConfig.context_frames
    else:
        steps = FlowConfig.sampling_steps if sampling_steps is None else int(sampling_steps)
        k = FlowConfig.context_frames
    frames, actions, meanings = _start_clips(DEFAULT_ENV_ID, num_starts, k, seed)
    n = len(meanings)
    if backbone == "unet":
        size = dict(widths=(8, 16, 16), groups=4, cond_dim=8, cond_hidden_dim=16) if tiny else {}
        world_model: torch.nn.Module = UNetWorldModel(UNetConfig(num_actions=n, sampling_steps=steps, **size))
    elif tiny:
        from dws_gym.models.flow import FlowWorldModel  # diffusers' transformer package: only for this backbone

        world_model = FlowWorldModel(FlowConfig(num_actions=n, patch_size=4, num_heads=2, head_dim=48, num_layers=1,
                                                ffn_dim=64, freq_dim=16, text_dim=16, cond_dim=16,
                                                sampling_steps=steps))
    else:
        from dws_gym.models.flow import FlowWorldModel

        world_model = FlowWorldModel(FlowConfig(num_actions=n, sampling_steps=steps))
    head = (RewardConfig(context_frames=k, num_actions=n, dim=16, depth=1, num_heads=2) if tiny
            else RewardConfig(context_frames=k, num_actions=n))
    config = SimulatorConfig(env_id=DEFAULT_ENV_ID, action_meanings=list(meanings), context_frames=k,
                             sampling_steps=steps, backbone=backbone)
    return Simulator(config, world_model, RewardHead(head), frames, actions)


def describe_world_model(sim: Simulator) -> str:
    """The backbone's architecture in a few words (both backbones)."""
    cfg = sim.world_model.config
    if isinstance(sim.world_model, UNetWorldModel):
        return (f"pixel U-Net, widths {tuple(cfg.widths)}, K={sim.context_frames} "
                f"({unet_flops_per_frame(cfg) / 1e9:.2f} GFLOP of convolutions per network call)")
    if hasattr(cfg, "width"):
        return (f"flow ({cfg.space} space, patch {cfg.patch_size}, width {cfg.width}, depth {cfg.num_layers}, "
                f"K={sim.context_frames})")
    return f"{type(sim.world_model).__name__}, K={sim.context_frames}"


class Compiler:
    """Turns ``torch.compile`` of the world model's network call and the reward head's tensor work on and off
    (:meth:`Simulator.compile`, compiled once and kept)."""

    def __init__(self, sim: Simulator, backend: str, mode: str | None, dynamic: bool = False,
                 inductor_options: Sequence[str] = ()) -> None:
        options: dict[str, Any] = {"backend": backend, **({"mode": mode} if mode else {}),
                                   **({"dynamic": True} if dynamic else {}),
                                   **({"options": {name: True for name in inductor_options}} if inductor_options
                                      else {})}
        self.sim = sim
        self.description = sim.compile(**options)
        # kept, so switching back on does not recompile
        self.compiled = [(owner, name, owner.__dict__[name]) for owner, name in sim.compile_targets()]
        sim.compile(False)

    def set(self, on: bool) -> None:
        for owner, name, fn in self.compiled:
            if on:
                setattr(owner, name, fn)
            else:
                owner.__dict__.pop(name, None)


def prepare_simulators(base: Simulator, device: torch.device, dtypes: Sequence[str],
                       bf16_mode: str) -> dict[str, Simulator]:
    """One inference copy of ``base`` per requested dtype, on ``device``, parameters frozen.

    ``cast`` mode: ``Simulator.set_precision(dtype)`` (the simulator's own bf16 path). ``autocast`` mode: weights
    stay float32 (the timed steps then run under ``Precision.autocast``)."""
    sims = {}
    for dtype in dtypes:
        sim = copy.deepcopy(base).to(device)
        for p in [*sim.world_model.parameters(), *sim.reward_head.parameters()]:
            p.requires_grad_(False)  # inference only (and torch's flop counter needs it under no_grad)
        sim.set_precision("fp32" if bf16_mode == "autocast" else dtype)
        sims[dtype] = sim
    return sims


def bf16_path(precision_bf16: bool, bf16_mode: str) -> str:
    if not precision_bf16:
        return "fp32 weights, no autocast"
    if bf16_mode == "autocast":
        return "fp32 weights under torch.autocast(bfloat16)"
    return "weights cast to bfloat16 (Simulator.set_precision)"


# ================================================================================================== FLOPs
def _cpu_sdpa_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args: Any,
                    out_shape: Any = None, **kwargs: Any) -> int:
    # torch's counter knows the CUDA attention kernels only; the CPU kernel does the same two matmuls.
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> Any:
    """A ``FlopCounterMode`` that also counts the CPU attention kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping: dict[Any, Any] = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_step_flops(step: Callable[[], Any], num_envs: int) -> float:
    """Counted FLOPs of one call of ``step`` (one env step of ``num_envs`` envs), divided by ``num_envs``."""
    with flop_counter() as counter:
        step()
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
            self._base = proc_status_bytes("VmRSS")
        else:
            self._base = self._maxrss()

    def peak(self) -> float:
        """Bytes since :meth:`start`."""
        if self.kind == "cuda":
            return float(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "vmhwm":
            return float(proc_status_bytes("VmHWM") - self._base)
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


def measure_dream(sim: Simulator, num_envs: int, variant: Variant, args: Args, device: torch.device,
                  memory: _PeakMemory, compiler: Compiler | None = None) -> Row:
    """Time one ``num_envs`` x variant of the dream env; OOM (and a failed compile) is reported in ``Row.note``."""
    row = Row(num_envs, precision=sim.precision.name, compiled=variant.compiled, cached=variant.cached,
              requested=variant.dtype)
    autocast = args.bf16_mode == "autocast" and resolve_precision(variant.dtype, device).bf16
    if autocast:
        row.precision = "bf16"
    context = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    rng = np.random.default_rng(args.seed)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    env = None
    memory.start()
    try:
        env = DreamVectorEnv(sim, num_envs, device=device, dtype="fp32" if autocast else variant.dtype,
                             sampling_steps=args.sampling_steps, output=args.output, rolling_cache=variant.cached)
        env.reset(seed=args.seed)
        plan = rng.integers(0, env.single_action_space.n, (max(args.steps, 1), num_envs))
        with context():
            env.step(plan[0])
            # Steady state: FLOPs of one step after the first, counted eagerly (the same math compiled or not).
            row.flops_per_transition = count_step_flops(lambda: env.step(plan[1 % len(plan)]), num_envs)
            if compiler is not None:
                compiler.set(variant.compiled)
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
            if not variant.compiled:
                raise
            row.note = f"compile failed: {type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
        else:
            row.peak_memory = memory.peak()
            row.note = f"out of memory ({type(err).__name__})"
    except Exception as err:  # a compiled run can fail in many ways (no compiler, unsupported op): report it
        if not variant.compiled:
            raise
        row.note = f"compile failed: {type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
    finally:
        if compiler is not None:
            compiler.set(False)
        if env is not None:
            env.close()
        env = None  # drop the last reference before collecting
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def measure_real(env_id: str, num_envs: int, args: Args) -> float:
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


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "n/a"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def format_table(rows: Sequence[Row], *, peak_flops: float | None = None, synthesize: int | None = None) -> str:
    """The markdown table of a sweep; ``peak_flops`` (FLOP/s) adds a "% of peak" column, ``synthesize`` the
    estimated time for that many transitions."""
    cols = ["num_envs", "precision", "compiled", "steps timed", "dream transitions/s", "s / dream step", "simulated",
            "real ALE transitions/s", "dream / real", "peak memory MiB", "FLOPs / transition", "achieved FLOP/s",
            "rolling cache"]
    if peak_flops:
        cols.append("% of peak FLOP/s")
    if synthesize:
        cols.append(f"time for {synthesize:,} transitions")
    cols.append("note")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        precision = r.precision if r.requested in ("", r.precision) else f"{r.precision} ({r.requested})"
        cells = [str(r.num_envs), precision, "yes" if r.compiled else "no", str(r.steps), _num(r.dream_tps, ",.1f"),
                 _num(r.seconds_per_step, ".3f"),
                 _num(100 * r.simulated, ".1f") + ("%" if np.isfinite(r.simulated) else ""),
                 _num(r.real_tps, ",.0f"), _num(r.ratio, ".4g"), _num(r.peak_memory / MiB, ",.0f"),
                 _si(r.flops_per_transition), _si(r.flops_per_s), "yes" if r.cached else "no"]
        if peak_flops:
            cells.append(_num(100 * r.flops_per_s / peak_flops, ".2f"))
        if synthesize:
            real = synthesize / r.real_tps if r.real_tps > 0 else float("nan")
            cells.append(f"{_duration(r.synthesize_seconds)} (real env {_duration(real)})")
        cells.append(r.note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results_section(path: Path, title: str, command: str, details: Sequence[str], body: str) -> None:
    """Append ``## title (date)`` with the machine, the command, detail lines and ``body`` (a table) to ``path``."""
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"Machine: {describe_machine()}", f"Command: `{command}`", *details]
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n## {title} ({date})\n\n" + "  \n".join(lines) + f"\n\n{body}\n")


# ================================================================================================== main
@dataclass
class Args:
    simulator: str | None = None
    """saved simulator folder (default: a fresh simulator of the default architecture)"""
    backbone: Literal["unet", "flow"] = "unet"
    """backbone of the fresh simulator"""
    tiny: bool = False
    """a tiny fresh simulator instead of the default one (tests)"""
    num_envs: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)
    """env counts, a row each"""
    steps: int = 20
    """dream / real steps timed per num_envs"""
    warmup: int = 2
    """untimed steps before timing (compilation happens here)"""
    time_budget: float = 60.0
    """stop timing a row after this many seconds (at least one step is timed)"""
    real_min_seconds: float = 1.0
    """time the real env at least this long"""
    max_seconds_per_step: float = 30.0
    """stop growing num_envs once one dream step takes longer"""
    sampling_steps: int | None = None
    """Euler steps per env step (default: the simulator's)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:<i>"""
    dtype: tuple[Literal["fp32", "bf16", "auto"], ...] = ("fp32", "auto")
    """precisions to time, each a row per num_envs (auto: bf16 where the hardware has it)"""
    bf16_mode: Literal["cast", "autocast"] = "cast"
    """bf16: the simulator's cast weights (default) or float32 weights under torch.autocast"""
    compile: Literal["off", "on", "both"] = "off"
    """torch.compile the world model's network call: on, both (eager and compiled rows) or off"""
    rolling_cache: Literal["off", "on", "both"] = "on"
    """keep the reward head's context tokens across steps (DreamVectorEnv(rolling_cache=...)): on, off or both"""
    compile_backend: str = "inductor"
    """torch.compile backend (eager: trace only)"""
    compile_mode: str | None = None
    """torch.compile mode (e.g. max-autotune-no-cudagraphs)"""
    compile_dynamic: bool = False
    """compile for any batch size at once (restarts make partial batches) instead of recompiling once a second
    batch size shows up"""
    inductor_options: tuple[str, ...] = ()
    """inductor settings turned on for the compiled rows (torch.compile(options={name: True})), e.g. freezing
    cpp_wrapper"""
    output: Literal["numpy", "torch"] = "numpy"
    """DreamVectorEnv output type"""
    peak_tflops: float | None = None
    """peak dense TFLOP/s for the % of peak column (default on CUDA: the H100 / H200 SXM bf16 peak; none on the CPU
    unless given)"""
    synthesize: int | None = None
    """estimate how long this many transitions take here, from every timed row"""
    threads: int | None = None
    """torch CPU threads"""
    ale_threads: int = os.cpu_count() or 1
    """ALE emulator threads"""
    real_env_id: str | None = None
    """real env to compare with (default: the simulator's)"""
    real: bool = True
    """time the real env in the same run (--no-real skips it)"""
    real_max_envs: int | None = None
    """time the real env at min(num_envs, this) envs: building thousands of emulators takes minutes while the
    threads saturate long before (the table says when it was capped)"""
    seed: int = 0
    """seeds the start states and the sampling noise"""
    note: str = ""
    """free text for the results section (e.g. shared CPU)"""
    write_results: bool = False
    """append a section to --results-file"""
    results_file: Path = Path(__file__).resolve().parent / "RESULTS.md"
    """the results file"""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if any(n < 1 for n in args.num_envs):
        usage_error(f"--num-envs must be positive integers, got {list(args.num_envs)}")
    if args.steps < 2 or args.warmup < 0:
        usage_error("--steps must be >= 2 and --warmup >= 0")
    if args.simulator is not None and args.tiny:
        usage_error("--tiny builds a fresh simulator; do not combine it with --simulator")
    if args.real_max_envs is not None and args.real_max_envs < 1:
        usage_error(f"--real-max-envs must be positive, got {args.real_max_envs}")
    if args.synthesize is not None and args.synthesize < 1:
        usage_error(f"--synthesize must be a positive number of transitions, got {args.synthesize}")
    args.dtype = tuple(dict.fromkeys(args.dtype))
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the sweep, print the table (and append it to the results file with ``--write-results``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # What a CPU dream env sets up anyway, done before anything is allocated so that every row runs under it.
    allocator = keep_freed_memory() if device.type == "cpu" else "malloc as it is (not stepping on a CPU)"

    if args.simulator is not None:
        base = Simulator.from_pretrained(args.simulator, device="cpu")
        what = f"simulator `{args.simulator}`"
    else:
        base = build_default_simulator(backbone=args.backbone, tiny=args.tiny, sampling_steps=args.sampling_steps,
                                       seed=args.seed)
        what = (f"fresh {'TINY' if args.tiny else 'default-architecture'} {base.config.backbone} simulator "
                "(untrained weights; throughput does not depend on the weights)")
    sims = prepare_simulators(base, device, args.dtype, args.bf16_mode)
    precisions = {d: resolve_precision(d, device) for d in args.dtype}
    paths = "; ".join(f"--dtype {d} ran {precisions[d].name} ({precisions[d].reason}; "
                      f"{bf16_path(precisions[d].bf16, args.bf16_mode)})" for d in args.dtype)
    wm_params = sum(p.numel() for p in base.world_model.parameters())
    rh_params = sum(p.numel() for p in base.reward_head.parameters())
    steps = base.config.sampling_steps if args.sampling_steps is None else args.sampling_steps
    real_id = args.real_env_id or base.config.env_id
    desc = (f"{what}: {describe_world_model(base)}; world model {wm_params / 1e6:.2f}M + reward head "
            f"{rh_params / 1e6:.2f}M parameters; {steps} Euler step{'s' if steps != 1 else ''} per env step; "
            f"on {device}; output={args.output}")
    print(desc, file=sys.stderr)
    print(f"CPU: {cpu_model()}; precision: {paths}; {allocator}", file=sys.stderr)

    compiled = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    compilers = ({d: Compiler(sims[d], args.compile_backend, args.compile_mode, args.compile_dynamic,
                              args.inductor_options)
                  for d in args.dtype} if True in compiled else {})
    cached = {"off": [False], "on": [True], "both": [False, True]}[args.rolling_cache]
    variants = [Variant(d, c, k) for d in args.dtype for c in compiled for k in cached]
    memory = _PeakMemory(device)
    rows: list[Row] = []
    real_cache: dict[int, float] = {}
    for n in args.num_envs:
        these: list[Row] = []
        for v in variants:
            row = measure_dream(sims[v.dtype], n, v, args, device, memory, compilers.get(v.dtype))
            if not row.note and row.seconds_per_step > args.max_seconds_per_step:
                row.note = f"stopped: a step took {row.seconds_per_step:.1f} s > {args.max_seconds_per_step} s"
            if args.synthesize:
                row.synthesize_seconds = args.synthesize / row.dream_tps if row.dream_tps > 0 else float("nan")
            these.append(row)
            print(f"num_envs {n} {row.precision}{' compiled' if row.compiled else ''}"
                  f"{' cached' if row.cached else ''}: dream {row.dream_tps:,.1f}/s, "
                  f"{_si(row.flops_per_transition, 'FLOP')}/transition {row.note}", file=sys.stderr)
        if args.real and any(r.dream_tps > 0 for r in these):
            m = min(n, args.real_max_envs or n)
            if m not in real_cache:
                real_cache[m] = measure_real(real_id, m, args)
            for r in these:
                r.real_tps = real_cache[m]
                if m < n:
                    r.note = "; ".join(filter(None, [r.note, f"real env timed at {m} envs"]))
            print(f"num_envs {n}: real {real_cache[m]:,.0f}/s at {m} envs", file=sys.stderr)
        rows.extend(these)
        if any(r.note.startswith(("stopped", "out of memory")) for r in these):
            break

    peak_tflops = args.peak_tflops if args.peak_tflops else (H100_H200_BF16_TFLOPS if device.type == "cuda" else None)
    peak = peak_tflops * 1e12 if peak_tflops else None
    table = format_table(rows, peak_flops=peak, synthesize=args.synthesize)
    print(table)
    summary = synthesize_summary(rows, args.synthesize) if args.synthesize else ""
    if summary:
        print(summary)
    if args.write_results:
        given = sys.argv[1:] if argv is None else list(argv)
        command = "python bench/dream_env.py " + " ".join(shlex.quote(a) for a in given)
        real_line = ("real env not measured" if not args.real else
                     f"real env: `make_real_env({real_id!r}, num_envs, num_threads={args.ale_threads})`, random "
                     f"actions, at least {args.real_min_seconds:g} s per num_envs, in the same run"
                     + (f" (at most {args.real_max_envs} envs)" if args.real_max_envs else ""))
        details = [
            f"Simulator: {desc}.",
            f"Precision: {paths}.",
            f"Memory allocator: {allocator} (dws_gym.cpu_allocator).",
            (f"Compile: {next(iter(compilers.values())).description}, compiled during the warm-up steps."
             if compilers else "Compile: off (eager)."),
            f"Dream: random actions, NEXT_STEP autoreset (\"simulated\" = env-steps the simulator generated; the "
            f"rest were restarts), {args.warmup} warm-up steps, up to {args.time_budget:g} s timed per row; "
            f"{real_line}.",
            f"Peak memory: {memory.description}.",
            "FLOPs: one steady-state env step at the row's num_envs counted with torch.utils.flop_counter "
            "(matmuls, convolutions, attention dense incl. masked blocks; elementwise ops and norms not counted), "
            "divided by num_envs." + (f" % of peak against {peak_tflops:g} TFLOP/s." if peak else ""),
        ]
        if summary:
            details.append(summary)
        if args.note:
            details.append(f"Note: {args.note}")
        write_results_section(args.results_file, "Dream env throughput: DreamVectorEnv vs the real env", command,
                              details, table)
        print(f"appended to {args.results_file}", file=sys.stderr)
    return rows


def synthesize_summary(rows: Sequence[Row], n: int) -> str:
    """One line: the fastest timed row's estimate for ``n`` transitions, next to the real env's."""
    timed = [r for r in rows if r.dream_tps > 0]
    if not timed:
        return ""
    best = max(timed, key=lambda r: r.dream_tps)
    line = (f"Synthesizing {n:,} transitions here: {_duration(best.synthesize_seconds)} at the fastest row "
            f"({best.num_envs} envs, {best.precision}{', compiled' if best.compiled else ''}: "
            f"{best.dream_tps:,.0f} transitions/s)")
    if best.real_tps > 0:
        line += f"; the real env at {best.num_envs} envs: {_duration(n / best.real_tps)}"
    return line + "."


if __name__ == "__main__":
    main()
