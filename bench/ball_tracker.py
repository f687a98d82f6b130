"""Breakout ball tracking: does the dreamed ball stay where the real ball is?

Frame metrics average over the whole frame, where the ball is 1-2 pixels out of 4096. This diagnosis finds the
ball in the real and in the dreamed frames of held-out open-loop rollouts (real context, logged actions, the
simulator's own frames fed back) and reports the share of frames at h = 1..5 and h = 1..15 where the dreamed ball
lies within ``--radius`` (4) pixels of the real one, next to the same share for copying the last context frame.

Counting rule: only frames where the **real** ball is visible count (the ball is absent after a lost life, before
FIRE, and while it is among the bricks or at the paddle's rows, outside the tracked region); a dreamed frame without
a ball is a miss. So "model within 4 px" is a recall of the real ball's position.

The tracker (:func:`find_ball`) looks at rows 29..56 and columns 4..59 of a 64x64 frame: below the bottom brick row
(28), above the paddle (rows 57-59) and inside the side walls (columns 0-3 and 60-63). Nothing else is drawn there in
the real game (the background is exactly black), and the ball is a red blob of 1-4 pixels whose brightest channel is
96-200 after the 210x160 -> 64x64 resize; so the brightest pixel in the region, if its brightest channel reaches 64,
is the ball, and its position is the brightness-weighted centroid of the pixels >= 32 within 2 pixels of it.

    python bench/ball_tracker.py --simulator runs/breakout/simulator --data data/breakout --write-results
    python bench/ball_tracker.py --simulator dws_gym/assets/simulators/breakout --data data/breakout --clips 256

``--closed-loop E`` adds a diagnosis of the closed-loop returns (:func:`closed_loop_events`): E games from a seeded
reset under the same uniformly random actions (FIRE included) in the real env and the dream, as in
``python -m dws_gym.evaluation``'s closed-loop table, and per side the share of frames with a ball, the steps until the
first ball, the brick-loss events (bricks rows 17..28 lose pixels), the rewards, and the rewards paid within one step
of a brick loss (a dreamed reward elsewhere is a misread artefact). ``--keep-below`` overrides the simulator's
stepping threshold to see what it does to these.
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from dws_gym.data import TrajectoryStore
from dws_gym.evaluation import held_out_windows, open_loop_rollout
from dws_gym.flags import usage_error
from dws_gym.hardware import describe_machine
from dws_gym.metrics import HeldOutTable
from dws_gym.simulator import Simulator

#: Rows (half-open) between the bottom brick row and the paddle, and columns inside the side walls.
BALL_ROWS: tuple[int, int] = (29, 57)
BALL_COLS: tuple[int, int] = (4, 60)
#: The ball's brightest pixel must reach this in its brightest channel (the real ball's: 96..200).
PEAK_THRESHOLD: int = 64
#: Pixels at least this bright within BLOB_RADIUS of the peak form the blob whose centroid is returned.
BLOB_THRESHOLD: int = 32
BLOB_RADIUS: int = 2
#: Default distance (pixels) within which the dreamed ball agrees with the real one.
AGREE_RADIUS: float = 4.0
#: Rows (half-open) of the six brick rows, and the brightness (brightest channel) a brick pixel has.
BRICK_ROWS: tuple[int, int] = (17, 29)
BRICK_THRESHOLD: int = 60


def find_ball(frame: np.ndarray) -> tuple[float, float] | None:
    """``(y, x)`` of the ball in a uint8 (64, 64, 3) Breakout frame (sub-pixel centroid), or ``None`` if absent.

    See the module docstring for the rule. ``None`` on a reset frame (no ball before FIRE) and whenever the ball is
    outside rows 29..56 (among the bricks, at the paddle, or lost).
    """
    f = np.asarray(frame)
    if f.shape != (64, 64, 3) or f.dtype != np.uint8:
        raise ValueError(f"find_ball needs a uint8 (64, 64, 3) Breakout frame, got {f.dtype} {f.shape}")
    (r0, r1), (c0, c1) = BALL_ROWS, BALL_COLS
    region = f[r0:r1, c0:c1].max(axis=-1).astype(np.float64)
    y, x = np.unravel_index(int(region.argmax()), region.shape)
    if region[y, x] < PEAK_THRESHOLD:
        return None
    ya, yb = max(0, y - BLOB_RADIUS), min(region.shape[0], y + BLOB_RADIUS + 1)
    xa, xb = max(0, x - BLOB_RADIUS), min(region.shape[1], x + BLOB_RADIUS + 1)
    w = region[ya:yb, xa:xb]
    w = np.where(w >= BLOB_THRESHOLD, w, 0.0)
    ys, xs = np.mgrid[ya:yb, xa:xb]
    total = w.sum()
    return (float((w * ys).sum() / total) + r0, float((w * xs).sum() / total) + c0)


def ball_positions(frames: np.ndarray) -> np.ndarray:
    """float64 ``(..., 2)`` ball ``(y, x)`` of every frame of uint8 ``(..., 64, 64, 3)``; NaN where absent."""
    f = np.asarray(frames)
    flat = f.reshape(-1, *f.shape[-3:])
    out = np.full((flat.shape[0], 2), np.nan)
    for i, frame in enumerate(flat):
        pos = find_ball(frame)
        if pos is not None:
            out[i] = pos
    return out.reshape(*f.shape[:-3], 2)


def _agree(pred: np.ndarray, real: np.ndarray, radius: float) -> np.ndarray:
    """bool: the predicted ball exists and lies within ``radius`` of the real one (False where either is NaN)."""
    with np.errstate(invalid="ignore"):
        return np.linalg.norm(pred - real, axis=-1) <= radius


def ball_agreement(
    sim: Simulator,
    clips: Mapping[str, Any],
    horizon: int = 15,
    *,
    generator: torch.Generator | None,
    radius: float = AGREE_RADIUS,
    batch_size: int | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """Roll ``sim`` open loop over real windows and compare the dreamed ball with the real ball per horizon.

    Args:
        sim: A Breakout simulator (64x64 frames).
        clips: Windows as :func:`dws_gym.evaluation.sample_eval_clips` gives them: ``frames`` uint8
            ``(N, >= K + horizon, 64, 64, 3)`` and ``actions``.
        horizon: ``T``, steps dreamed.
        generator: The simulator's sampling noise.
        radius: Agreement distance in pixels.
        batch_size, steps: As in :func:`dws_gym.evaluation.open_loop_rollout`.

    Returns:
        ``real``, ``model``, ``copy``: float64 ``(N, T, 2)`` ball positions (NaN = absent; ``copy`` is the last
        context frame's ball at every step); ``present`` bool ``(N, T)`` (real ball visible); ``model_agree`` /
        ``copy_agree`` bool ``(N, T)``; ``table`` (:class:`~dws_gym.metrics.HeldOutTable`, one row per span of
        horizons ``1..5`` and ``1..T``).
    """
    k = sim.context_frames
    frames, actions = np.asarray(clips["frames"]), np.asarray(clips["actions"])
    if frames.shape[1] < k + horizon:
        raise ValueError(f"clips hold {frames.shape[1]} frames; context {k} + horizon {horizon} are needed")
    rollout = open_loop_rollout(sim, frames[:, :k], actions[:, : k - 1], actions[:, k - 1 : k - 1 + horizon],
                                generator=generator, batch_size=batch_size, steps=steps)  # fmt: skip
    real = ball_positions(frames[:, k : k + horizon])
    model = ball_positions(rollout["frames"])
    copy = np.repeat(ball_positions(frames[:, k - 1])[:, None], horizon, axis=1)
    present = ~np.isnan(real[..., 0])
    model_agree = present & _agree(model, real, radius)
    copy_agree = present & _agree(copy, real, radius)
    model_absent = present & np.isnan(model[..., 0])

    def share(mask: np.ndarray, upto: int) -> float:
        n = int(present[:, :upto].sum())
        return float(mask[:, :upto].sum() / n) if n else float("nan")

    rows = []
    for upto in sorted({min(5, horizon), horizon}):
        rows.append({
            "h": f"1..{upto}",
            "frames": int(present[:, :upto].size),
            "real ball visible": int(present[:, :upto].sum()),
            f"model within {radius:g} px": share(model_agree, upto),
            f"copy within {radius:g} px": share(copy_agree, upto),
            "model ball absent": share(model_absent, upto),
        })
    table = HeldOutTable(columns=list(rows[0]), rows=rows,
                         title=f"Ball agreement over {frames.shape[0]} held-out windows (h = 1..{horizon})")
    return {"real": real, "model": model, "copy": copy, "present": present, "model_agree": model_agree,
            "copy_agree": copy_agree, "table": table}  # fmt: skip


def brick_pixels(frames: np.ndarray) -> np.ndarray:
    """int ``(...)``: bright pixels in the brick rows (inside the walls) of uint8 ``(..., 64, 64, 3)`` frames."""
    (r0, r1), (c0, c1) = BRICK_ROWS, BALL_COLS
    return (np.asarray(frames)[..., r0:r1, c0:c1, :].max(axis=-1) > BRICK_THRESHOLD).sum(axis=(-1, -2))


def closed_loop_events(
    sim: Simulator,
    episodes: int = 100,
    steps: int = 100,
    seed: int = 0,
    *,
    sampling_steps: int | None = None,
) -> dict[str, Any]:
    """Play the same random actions from the same reset in real Breakout and the dream; compare their events.

    Runs :func:`dws_gym.evaluation.closed_loop_returns` (reset with ``seed``, ``K - 1`` real steps start the dream,
    then ``steps`` lockstep steps of uniformly random actions drawn from ``seed``) and keeps every frame.

    Returns:
        ``real`` / ``dream`` frames uint8 ``(E, T, 64, 64, 3)``, ``real_rewards`` / ``dream_rewards`` ``(E, T)``,
        and ``table`` (:class:`~dws_gym.metrics.HeldOutTable`, one row per side).
    """
    from dws_gym.evaluation import closed_loop_returns

    kept: dict[str, list[np.ndarray]] = {"real": [], "dream": []}

    def keep(_t: int, real: np.ndarray, dream: torch.Tensor) -> None:
        kept["real"].append(np.asarray(real).copy())
        kept["dream"].append(dream.cpu().numpy())

    result = closed_loop_returns(sim, episodes=episodes, steps=steps, seed=seed, sampling_steps=sampling_steps,
                                 reference=False, on_step=keep)  # fmt: skip
    out: dict[str, Any] = {"real": np.stack(kept["real"], axis=1), "dream": np.stack(kept["dream"], axis=1),
                           "real_rewards": result.real_rewards, "dream_rewards": result.dream_rewards}  # fmt: skip
    rows = []
    for side in ("real", "dream"):
        frames, rewards = out[side], out[f"{side}_rewards"]
        loss = np.diff(brick_pixels(frames), axis=1) < -1  # (E, T - 1): step t + 1 lost bricks
        near = loss.copy()
        near[:, 1:] |= loss[:, :-1]
        near[:, :-1] |= loss[:, 1:]
        paid = rewards[:, 1:] != 0
        ball = ~np.isnan(ball_positions(frames)[..., 0])
        first = np.where(ball.any(axis=1), ball.argmax(axis=1), steps)
        rows.append({
            "side": side, "mean return": float(rewards.sum(axis=1).mean()), "ball visible": float(ball.mean()),
            "steps to first ball": float(first.mean()), "brick-loss events": int(loss.sum()),
            "rewards": int(paid.sum()), "rewards within 1 step of a brick loss": int((paid & near).sum()),
        })  # fmt: skip
    out["table"] = HeldOutTable(columns=list(rows[0]), rows=rows,
                                title=f"Closed-loop events: {episodes} games x {steps} steps, same random actions")
    return out


@dataclass
class Args:
    simulator: str
    """Breakout simulator folder or Hub repo id"""
    data: str
    """trajectory store with ALE/Breakout-v5 episodes"""
    clips: int = 128
    """held-out windows (drawn with replacement if needed)"""
    horizon: int = 15
    """open-loop steps per window"""
    held_out_fraction: float = 0.1
    """as in python -m dws_gym.evaluation"""
    radius: float = AGREE_RADIUS
    """agreement distance in pixels"""
    sampling_steps: int | None = None
    """Euler steps per frame (default: the simulator's)"""
    batch_size: int = 64
    """windows per simulator call"""
    device: str = "cpu"
    """cpu | cuda | cuda:<i>"""
    seed: int = 0
    """seeds the windows and the sampling noise"""
    threads: int | None = None
    """torch CPU threads"""
    closed_loop: int = 0
    """also diagnose this many closed-loop games (real vs dream events; 0 = skip)"""
    closed_loop_steps: int = 100
    """steps per closed-loop game"""
    keep_below: float | None = None
    """override the simulator's stepping keep_below (U-Net / pixel backbones)"""
    write_results: bool = False
    """append a section to --results-file"""
    results_file: Path = Path(__file__).resolve().parent / "RESULTS.md"
    """the results file"""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.clips < 1 or args.horizon < 1 or args.radius < 0:
        usage_error("--clips and --horizon must be >= 1 and --radius >= 0")
    if args.closed_loop < 0 or args.closed_loop_steps < 2:
        usage_error("--closed-loop must be >= 0 and --closed-loop-steps >= 2")
    if args.keep_below is not None and not 0.0 <= args.keep_below < 1.0:
        usage_error(f"--keep-below must lie in [0, 1), got {args.keep_below}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Print the agreement table (and append it to the results file with ``--write-results``)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sim = Simulator.from_pretrained(args.simulator, device=args.device)
    if "breakout" not in sim.config.env_id.lower() or tuple(sim.config.obs_shape) != (64, 64, 3):
        raise SystemExit(f"the ball tracker reads 64x64 Breakout frames; {args.simulator} simulates "
                         f"{sim.config.env_id} at {tuple(sim.config.obs_shape)}")  # fmt: skip
    if args.keep_below is not None:
        if not hasattr(sim.world_model.config, "keep_below"):
            raise SystemExit(f"--keep-below: {args.simulator}'s backbone has no keep_below setting")
        sim.world_model.config.keep_below = args.keep_below
    clips = held_out_windows(TrajectoryStore(args.data), sim.config.env_id, sim.context_frames, args.horizon,
                             args.clips, args.held_out_fraction, args.seed)  # fmt: skip
    generator = torch.Generator(device=sim.device).manual_seed(args.seed)
    result = ball_agreement(sim, clips, args.horizon, generator=generator, radius=args.radius,
                            batch_size=args.batch_size, steps=args.sampling_steps)  # fmt: skip
    table = result["table"].to_markdown(float_format="{:.3f}")
    if args.closed_loop:
        events = closed_loop_events(sim, args.closed_loop, args.closed_loop_steps, args.seed,
                                    sampling_steps=args.sampling_steps)
        result["closed_loop"] = events
        table += "\n\n" + events["table"].to_markdown(float_format="{:.3f}")
    print(table)
    if args.write_results:
        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python bench/ball_tracker.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
        steps = sim.config.sampling_steps if args.sampling_steps is None else args.sampling_steps
        kb = getattr(sim.world_model.config, "keep_below", None)
        with open(args.results_file, "a", encoding="utf-8") as f:
            f.write(
                f"\n## Breakout ball tracking: dreamed vs real ball ({date})\n\n"
                f"Machine: {describe_machine()}  \nCommand: `{command}`  \n"
                f"Simulator `{args.simulator}` ({steps} Euler steps, keep_below {kb}), {args.clips} held-out windows of `{args.data}` "
                f"(last {args.held_out_fraction:g} of the episodes), open loop under the logged actions. Only frames "
                f"with a visible real ball count; a dreamed frame without a ball is a miss; `copy` keeps the last "
                f"context frame's ball.\n\n{table}\n"
            )
        print(f"appended to {args.results_file}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
