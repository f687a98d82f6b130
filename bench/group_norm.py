"""Group norm + SiLU at the Breakout U-Net's activation shapes: compiled torch, compiled ``dws_gym``, eager torch.

The U-Net's norms are :class:`dws_gym.models.group_norm.GroupNorm`, which compiles for a CPU to per-channel sums and
one multiply-add per element instead of torch's per-group Welford loop over strided channels-last slices (its module
docstring). This times both compiled forms, and eager ATen as the baseline, on channels-last bf16 activations of the
shapes a 64-env step of the default U-Net (widths 32 / 64 / 128, 2 x 2 cells, 8 groups) normalizes, and checks that
they agree. Every row is timed in the same process, alternating, and the medians are reported.

    python bench/group_norm.py --write-results
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from dream_env import write_results_section  # noqa: E402

from dws_gym.models.group_norm import GroupNorm  # noqa: E402

# (channels, side) of the default U-Net's normalized activations at 64 x 64 frames on 2 x 2 cells: the top level
# (32 channels; up0's input 32 + 64), the middle (64; up1's input 64 + 128) and the bottom (128).
SHAPES = ("32x32", "96x32", "64x16", "192x16", "128x8")


@dataclass
class Args:
    shapes: tuple[str, ...] = SHAPES
    """activations as CHANNELSxSIDE (default: the default U-Net's)"""
    batch: int = 64
    """activations per call (the envs of a step)"""
    groups: int = 8
    """norm groups"""
    dtype: str = "bf16"
    """bf16 | fp32"""
    threads: int = 2
    """torch threads"""
    calls: int = 30
    """timed calls per row (median reported)"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: str = str(ROOT / "bench" / "RESULTS.md")
    """where --write-results appends"""


def _median_ms(fn: Callable[[], torch.Tensor], calls: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def main(args: Args) -> str:
    """Time the rows, print the table (append it with --write-results) and return it."""
    torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    lines = ["| channels x side | torch compiled ms | dws_gym compiled ms | eager torch ms | compiled speed-up | "
             "max abs difference |", "|---|---|---|---|---|---|"]
    g = torch.Generator().manual_seed(0)
    for text in args.shapes:
        try:
            channels, side = (int(v) for v in text.split("x"))
        except ValueError:
            raise SystemExit(f"--shapes {text!r}: expected CHANNELSxSIDE, e.g. 32x32") from None
        if channels % args.groups:
            raise SystemExit(f"--shapes {text!r}: {channels} channels do not split into {args.groups} groups")
        ours = GroupNorm(args.groups, channels, eps=1e-5).to(dtype)
        with torch.no_grad():
            ours.weight.copy_(torch.randn(channels, generator=g))
            ours.bias.copy_(torch.randn(channels, generator=g))
        plain = torch.nn.GroupNorm(args.groups, channels, eps=1e-5).to(dtype)
        plain.load_state_dict(ours.state_dict())
        x = (torch.randn(args.batch, channels, side, side, generator=g) * 2 + 0.5).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        torch_compiled = torch.compile(lambda t: F.silu(plain(t)), dynamic=False)
        ours_compiled = torch.compile(lambda t: F.silu(ours(t)), dynamic=False)
        with torch.no_grad():
            diff = (torch_compiled(x).float() - ours_compiled(x).float()).abs().max().item()
            t_torch = _median_ms(lambda: torch_compiled(x), args.calls)
            t_ours = _median_ms(lambda: ours_compiled(x), args.calls)
            t_eager = _median_ms(lambda: F.silu(plain(x)), args.calls)
        lines.append(f"| {channels} x {side} | {t_torch:.2f} | {t_ours:.2f} | {t_eager:.2f} | {t_torch / t_ours:.2f}× "
                     f"| {diff:.3g} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        command = "python bench/group_norm.py " + " ".join(sys.argv[1:])
        details = [f"{args.batch} x C x side x side channels-last {args.dtype} activations, {args.groups} groups, "
                   f"{args.threads} torch threads, median of {args.calls} calls; torch {torch.__version__}"]
        write_results_section(Path(args.results_file), "Group norm + SiLU, compiled: torch's and dws_gym's form",
                              command, details, text)
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
