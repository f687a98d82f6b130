"""Where a dream step's time goes, and what narrower networks would buy: ``Simulator.step`` rows in one process.

Each row is a simulator: a saved one (``--simulator``, repeatable) or a copy of the first one with fresh weights at
other U-Net widths and reward-head depth (``--sizes 16,32,64:1`` is widths 16 / 32 / 64 and a head of depth 1;
``16,32,64`` keeps the head's depth). Three more optional parts: ``c4`` a U-Net on 4x4 space-to-depth cells
(``UNetConfig.cell``), ``m1`` a head whose cross-attention reads only the last context frame
(``RewardConfig.memory_frames``) and ``p16`` a head on 16 x 16-pixel patch tokens (``RewardConfig.patch_size``), as
in ``24,48,64:1:c4:m1:p16``. Fresh rows are for timing only: the time of a step does not depend on the weights, only
on the shapes. Every row steps ``--num-envs`` envs from the first simulator's start clips, with the reward head's
rolling token cache (as the dream env steps), in the precision ``--dtype`` resolves to, compiled with ``--compile
on``. Per row: the whole ``Simulator.step``, the world model's ``sample_next`` alone and the head's work alone (the
new frame's tokens and the logits). Rows alternate inside each of ``--rounds`` rounds, so that load on a shared
machine falls on all of them, and the medians over rounds are reported.

FLOPs per transition are counted in one eager step, before compiling, with ``dream_env.py``'s counter (matmuls,
convolutions, attention). The real env of the simulator's game at the same ``--num-envs`` is timed in the same run,
for scale: "vs real" is ``num_envs / step time`` over the real env's transitions/s. ``dream_env.py`` adds the env's
own work (autoreset, observations to numpy, about 1.5 ms a step at 64 envs) around each step; on a 2-core AMX Xeon
the two benches' ratios to real ALE agreed within 7%.

    python bench/step_sizes.py --sizes 16,48,96 16,32,64 16,32,64:1 24,48,64:1:c4:m1 --write-results
    python bench/step_sizes.py --simulator dws_gym/assets/simulators/breakout runs/student/simulator --write-results
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import dream_env  # noqa: E402
from dream_env import count_step_flops, write_results_section  # noqa: E402

from dws_gym.cpu_allocator import keep_freed_memory  # noqa: E402
from dws_gym.models.unet import UNetWorldModel  # noqa: E402
from dws_gym.simulator import Simulator, resolve_simulator_path  # noqa: E402


@dataclass
class Args:
    simulator: tuple[str, ...] = (str(ROOT / "dws_gym" / "assets" / "simulators" / "breakout"),)
    """saved simulator folders, a row each; the first one is also the base of the --sizes rows"""
    sizes: tuple[str, ...] = ()
    """fresh-weight variants of the first simulator, a row each: `W0,W1,W2` (U-Net widths), then optionally `:D`
    (reward-head depth D), `:c4` (4x4 space-to-depth cells), `:mM` (the head reads the last M context frames) and
    `:pP` (the head's patch side P pixels)"""
    num_envs: int = 64
    """envs stepped as one batch"""
    threads: int = 2
    """torch threads"""
    ale_threads: int = 2
    """threads of the real ALE vector env"""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """precision of every row (`auto`: bf16 where the hardware has native bf16)"""
    compile: Literal["on", "off"] = "on"
    """torch.compile each row (Simulator.compile)"""
    rounds: int = 6
    """rounds of alternating rows; medians over them"""
    steps_per_round: int = 3
    """calls timed per row and round (their mean is the round's figure)"""
    warmup: int = 3
    """untimed calls per row first (compilation)"""
    real_steps: int = 100
    """real-env steps timed (at least; and at least one second)"""
    seed: int = 0
    """seed of the sampling noise, the actions and the real env"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: str = str(ROOT / "bench" / "RESULTS.md")
    """where --write-results appends"""


@dataclass(frozen=True)
class Size:
    """A fresh row's shape; ``None`` keeps the first simulator's setting."""

    widths: tuple[int, int, int]
    depth: int | None = None
    cell: int | None = None
    memory_frames: int | None = None
    patch_size: int | None = None

    def label(self, base: Simulator) -> str:
        head = base.reward_head.config
        text = f"fresh: widths {'/'.join(map(str, self.widths))}"
        if self.cell is not None:
            text += f", {self.cell}x{self.cell} cells"
        text += f", head depth {head.depth if self.depth is None else self.depth}"
        if self.memory_frames is not None:
            text += f" reading {self.memory_frames} of {head.context_frames} frames"
        if self.patch_size is not None:
            text += f", {self.patch_size} px patches"
        return text


def parse_size(text: str) -> Size:
    """``"16,32,64:1"`` -> widths (16, 32, 64) and head depth 1; ``"24,48,64:1:c4:m1:p16"`` also 4x4 cells and a
    head that reads the last context frame only, on 16 x 16-pixel patches; ``"16,32,64"`` keeps the first
    simulator's head and cells."""
    widths_text, *parts = text.split(":")
    depth = cell = memory = patch = None
    try:
        widths = tuple(int(w) for w in widths_text.split(","))
        for part in parts:
            if part.startswith("c") and cell is None:
                cell = int(part[1:])
            elif part.startswith("m") and memory is None:
                memory = int(part[1:])
            elif part.startswith("p") and patch is None:
                patch = int(part[1:])
            elif depth is None:
                depth = int(part)
            else:
                raise ValueError(part)
    except ValueError:
        widths = ()
    options = (depth, cell, memory, patch)
    if len(widths) != 3 or any(w < 1 for w in widths) or any(v is not None and v < 1 for v in options):
        raise SystemExit(f"--sizes {text!r}: expected three positive U-Net widths, then optionally a head depth, "
                         "cN (space-to-depth cells), mN (context frames the head reads) and pN (the head's patch "
                         "side), as in 16,32,64 or 16,32,64:1 or 24,48,64:1:c4:m1:p16")
    return Size(widths, depth, cell, memory, patch)  # type: ignore[arg-type]


def fresh_variant(base: Simulator, size: Size) -> Simulator:
    """A simulator shaped like ``base`` with a fresh U-Net and a fresh head of ``size`` (timing only)."""
    if not isinstance(base.world_model, UNetWorldModel):
        raise SystemExit(f"--sizes needs a U-Net simulator as the first --simulator, got "
                         f"{type(base.world_model).__name__}")
    wm_config, head_config = base.world_model.config, base.reward_head.config
    try:
        wm = UNetWorldModel(dataclasses.replace(wm_config, widths=size.widths,
                                                cell=wm_config.cell if size.cell is None else size.cell))
        head = type(base.reward_head)(dataclasses.replace(
            head_config, depth=head_config.depth if size.depth is None else size.depth,
            memory_frames=head_config.memory_frames if size.memory_frames is None else size.memory_frames,
            patch_size=head_config.patch_size if size.patch_size is None else size.patch_size))
    except ValueError as e:
        raise SystemExit(f"--sizes: {e}") from e
    return Simulator(base.config, wm, head, base.start_frames, base.start_actions)


@dataclass
class Row:
    label: str
    sim: Simulator
    state: Any = None
    step_ms: list[float] = dataclasses.field(default_factory=list)
    wm_ms: list[float] = dataclasses.field(default_factory=list)
    head_ms: list[float] = dataclasses.field(default_factory=list)
    flops: float = float("nan")


def _mean_ms(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1000.0 * (time.perf_counter() - t0) / calls


def real_rate(env_id: str, num_envs: int, args: Args) -> float:
    """Transitions/s of the real vector env, measured as ``dream_env.py`` measures it (random actions, at least
    ``--real-steps`` steps and one second)."""
    return dream_env.measure_real(env_id, num_envs, dream_env.Args(ale_threads=args.ale_threads, seed=args.seed,
                                                                    steps=args.real_steps, warmup=10))


def main(args: Args) -> str:
    """Time every row, print the table (append it with --write-results) and return it."""
    if not args.simulator:
        raise SystemExit("--simulator needs at least one folder (the --sizes rows are shaped from the first)")
    torch.set_num_threads(args.threads)
    allocator = keep_freed_memory()  # as a dream env on a CPU steps (dws_gym.cpu_allocator)
    rows = []
    for path in args.simulator:
        rows.append(Row(f"`{path}`", Simulator.from_pretrained(resolve_simulator_path(path))))
    base = rows[0].sim
    for text in args.sizes:
        size = parse_size(text)
        rows.append(Row(size.label(base), fresh_variant(base, size)))
    n = args.num_envs
    pick = torch.arange(n) % base.start_frames.shape[0]
    frames, actions = base.start_frames[pick], base.start_actions[pick]
    action = torch.from_numpy(np.random.default_rng(args.seed).integers(0, base.num_actions, n)).long()
    g = torch.Generator().manual_seed(args.seed)
    precision = None
    with torch.no_grad():
        for row in rows:
            precision = row.sim.set_precision(args.dtype)
            row.state = row.sim.init_state(frames, actions)
            # FLOPs are counted eagerly, before compiling, as dream_env.py counts them: a compiled step run once
            # under the flop counter's dispatch mode ran about 1.5x slower afterwards (the Breakout default at 64
            # envs, bf16 on an AMX Xeon: 87 ms a step before the count, 134 after; bench/RESULTS.md).
            row.flops = count_step_flops(lambda: row.sim.step(row.state, action, g), n)
            if args.compile == "on":
                row.sim.compile(True)
        for row in rows:
            sim, st = row.sim, row.state
            for _ in range(args.warmup):
                sim.step(st, action, g)
        for r in range(args.rounds):
            for row in rows if r % 2 == 0 else reversed(rows):
                sim, st, head = row.sim, row.state, row.sim.reward_head
                frame = sim.world_model.sample_next(st.frames, st.actions, action, generator=g)

                def head_work() -> Any:
                    tokens = torch.cat([st.head_tokens, head.frame_tokens(frame[:, None])], dim=1)
                    return head.logits_from_tokens(tokens, action)

                row.step_ms.append(_mean_ms(lambda: sim.step(st, action, g), args.steps_per_round))
                row.wm_ms.append(_mean_ms(lambda: sim.world_model.sample_next(st.frames, st.actions, action,
                                                                              generator=g), args.steps_per_round))
                row.head_ms.append(_mean_ms(head_work, args.steps_per_round))
            print(f"round {r + 1}: " + ", ".join(f"{row.label} {row.step_ms[-1]:.1f} ms" for row in rows), flush=True)
    real = real_rate(base.config.env_id, n, args)
    first = float(np.median(rows[0].step_ms))
    lines = ["| row | FLOPs / transition | step ms (median) | world model ms | head ms | transitions/s | "
             f"vs first row | vs real ({real:,.0f} transitions/s) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        step = float(np.median(row.step_ms))
        rate = 1000.0 * n / step
        lines.append(f"| {row.label} | {row.flops / 1e6:.1f} M | {step:.1f} | {np.median(row.wm_ms):.1f} | "
                     f"{np.median(row.head_ms):.1f} | {rate:,.0f} | {first / step:.2f}× | {rate / real:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        command = "python bench/step_sizes.py " + " ".join(sys.argv[1:])
        details = [f"{n} envs, {args.threads} torch threads (real env: {args.ale_threads}), "
                   f"{precision.reason if precision else args.dtype}, compile {args.compile}, medians over "
                   f"{args.rounds} alternating rounds of {args.steps_per_round} calls; fresh rows have untrained "
                   f"weights (timing only); {allocator}"]
        write_results_section(Path(args.results_file), "Dream step by network size: Simulator.step in one process",
                              command, details, text)
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
