"""Synthesize transitions with a DWS simulator to augment an offline dataset (the paper's Table 2 setting).

Dreams start from real windows of ``--dataset``; a behaviour policy (``--policy``: a ``save_policy`` folder, e.g. the
expert that collected the dataset, a scripted policy ``scripted:<name>[:eps]``, or uniform random) acts in them with
probability ``1 - epsilon``; the simulator's reward / termination head scores every step; each dream is cut after
``--horizon`` steps (a truncation). Episodes are written atomically to ``--out`` as they end, marked synthetic with
the simulator, the policy and their start window in the metadata. Killed and run again with the same arguments, it
continues: nothing written is lost or written twice, and it stops at exactly ``--transitions`` steps.

    python offline/augment.py --dataset data/coinrun --out data/coinrun-synthetic --policy runs/coinrun-ppo/policy
    python offline/augment.py --dataset data/breakout-tracker --out data/breakout-synthetic \\
        --policy scripted:breakout-tracker:0.25 --transitions 100000
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from dws_gym.offline import synthesize


@dataclass
class Args:
    dataset: str = "data/coinrun"
    """the real trajectory store whose windows start the dreams"""
    out: str = "data/coinrun-synthetic"
    """the synthetic trajectory store (created if missing; a re-run continues it)"""
    transitions: int = 1_000_000
    """steps the synthetic store holds when the run ends"""
    simulator: str | None = None
    """simulator folder or Hub repo id (default: the one shipped for the dataset's game)"""
    policy: str | None = None
    """behaviour policy: save_policy folder, `scripted:<name>[:eps]`, or omitted for uniform random"""
    epsilon: float = 0.0
    """probability of a uniformly random action instead of the policy's"""
    deterministic: bool = False
    """take the policy's most likely action (before epsilon)"""
    horizon: int = 32
    """steps of a dream before it is cut (dreams drift from the real game as they grow)"""
    num_envs: int = 64
    """dreams stepped as one batch"""
    device: str = "auto"
    """where the simulator steps: auto | cpu | cuda"""
    dtype: str = "auto"
    """stepping precision: auto (bf16 where the hardware has it) | bf16 | fp32"""
    seed: int = 0
    """first seed of the run (moved past seeds earlier runs into --out used)"""
    compile: bool = False
    """torch.compile the simulator's network: 1.2x the transitions/s on an AMX CPU in bf16 (measured), after a
    first step that compiles (a minute or so)"""
    progress: bool = True
    """show a progress bar with transitions/s"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    result = synthesize(args.dataset, args.out, args.transitions, simulator=args.simulator, policy=args.policy,
                        epsilon=args.epsilon, deterministic=args.deterministic, horizon=args.horizon,
                        num_envs=args.num_envs, device=args.device, dtype=args.dtype, seed=args.seed,
                        compile=args.compile, progress=args.progress)
    print(f"wrote {result.transitions} transitions in {result.episodes} episodes ({result.seconds:.1f} s, "
          f"{result.transitions_per_second:.1f} transitions/s, {result.precision}); {args.out} holds "
          f"{result.total} of {args.transitions}", flush=True)
