"""Training throughput of the default flow world model (samples/s), with and without the DWS action module.

The baseline in the same run is the identical backbone with ``action_mode="none"`` (no action module), so the ratio
is the module's training cost. Real Breakout clips are used when ``--data`` points at a trajectory store; otherwise
random frames (throughput does not depend on pixel values).

    python bench/train_throughput.py --batch-size 8 --steps 5 --write-results
    python bench/train_throughput.py --device cuda --bf16 --batch-size 256 --write-results     # on a GPU
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from dws_gym.models.flow import FlowConfig, FlowWorldModel
from dws_gym.hardware import describe_machine


def describe_default() -> str:
    """The default FlowConfig in words (what this benchmark trains)."""
    cfg = FlowConfig(num_actions=4)
    params = FlowWorldModel(cfg).num_parameters()
    return (f"Default FlowConfig (pixel space, patch {cfg.patch_size}, width {cfg.width}, {cfg.num_layers} layers; "
            f"{params / 1e6:.2f}M parameters)")


def measure(mode: str, args: Args, frames: torch.Tensor, actions: torch.Tensor) -> float:
    torch.manual_seed(0)
    cfg = FlowConfig(num_actions=4, action_mode=mode, context_frames=args.context)
    model = FlowWorldModel(cfg).to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 else None

    def step() -> None:
        if amp is not None:
            with amp:
                loss, _ = model.training_loss(frames, actions, generator=g)
        else:
            loss, _ = model.training_loss(frames, actions, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - t)


@dataclass
class Args:
    batch_size: int = 8
    """clips per training step"""
    steps: int = 5
    """timed steps per variant"""
    context: int = 4
    """context frames K"""
    horizon: int = 4
    """target frames per clip (train_world_model.py's default)"""
    device: str = "cpu"
    """cpu | cuda | cuda:<i>"""
    bf16: bool = False
    """train under bf16 autocast"""
    threads: int | None = None
    """torch CPU threads"""
    data: str | None = None
    """trajectory store of real clips (default: random frames)"""
    write_results: bool = False
    """append the rows to --results-file"""
    results_file: str = str(Path(__file__).with_name("RESULTS.md"))
    """the results file"""


def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.threads:
        torch.set_num_threads(args.threads)
    k, h = args.context, args.horizon
    if args.data:
        from dws_gym.data import TrajectoryStore

        batch = TrajectoryStore(args.data).clips(k, h).sample(args.batch_size, np.random.default_rng(0))
        frames, actions = torch.from_numpy(batch["frames"]), torch.from_numpy(batch["actions"])
    else:
        frames = torch.randint(0, 256, (args.batch_size, k + h, 64, 64, 3), dtype=torch.uint8)
        actions = torch.randint(0, 4, (args.batch_size, k + h - 1))
    frames, actions = frames.to(args.device), actions.to(args.device)
    dws = measure("frame", args, frames, actions)
    base = measure("none", args, frames, actions)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    row = (f"| {date} | {args.device}{' bf16' if args.bf16 else ''} | {args.batch_size} | {k}+{args.horizon} | {dws:.2f} | "
           f"{base:.2f} | {dws / base:.3f} |")
    header = ("| date | device | batch | clip (K+H) | samples/s with DWS module | samples/s without (baseline) | "
              "ratio |\n|---|---|---|---|---|---|---|")
    print(header)
    print(row)
    if args.write_results:
        with open(args.results_file, "a") as f:
            f.write(f"\n## Flow world model training throughput ({date})\n\nMachine: {describe_machine()}  \n"
                    f"Command: `python {' '.join(sys.argv)}`  \n{describe_default()}; one AdamW step per batch, "
                    f"motion-reinforced loss; a sample is one clip of K context + H target frames.\n\n"
                    f"{header}\n{row}\n")


if __name__ == "__main__":
    main()
