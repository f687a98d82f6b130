"""Train a saved simulator's reward / termination head again, on real transitions and on the simulator's own dreams.

    python -m dws_gym.retrain_reward_head --simulator dws_gym/assets/simulators/breakout --data data/breakout-tracker \
        --dream-share 0.5 --out runs/breakout-dream-head
    python -m dws_gym.retrain_reward_head --simulator user/repo --data data/breakout --keep-below 0.06 \
        --out runs/breakout-kb06                 # a Hub simulator, stepping with another keep_below threshold

A head trained on real frames only scores, in a dream, frames it never saw: the world model draws a breaking brick
fainter, and long dreams gather artefacts that such a head may read as events. ``--dream-share`` puts a share of
transitions whose next frame the simulator's world model dreamed (open loop from real training windows under the
real actions, labelled with the real rewards; :class:`dws_gym.models.reward_training.DreamedTransitions`) in every
batch, so the head learns how this simulator draws events.

``--calibrate-windows N`` then sets the head's payment threshold: it dreams ``N`` uniformly drawn training windows
and shifts the no-reward logit until the head pays on as many dreamed transitions as the real game paid on those steps
(:func:`dws_gym.models.reward_training.calibrate_reward_rate`), so the dream pays at the real rate whichever way
training landed; ``--candidates K`` trains ``K`` seeds and keeps the most precise at that rate, and ``--no-train``
only calibrates the simulator's existing head:

    python -m dws_gym.retrain_reward_head --simulator runs/breakout-dreamhead --data data/breakout-tracker \
        --no-train --calibrate-windows 1024 --out runs/breakout-final

Every run also reads two rules of the game from the data and writes them into the head: what each reward sign pays
(CoinRun's coin: 10) and whether every reward ends its episode (CoinRun, Ninja: a dreamed reward then ends the dream).
``--no-train`` alone applies only these to the existing head.

Only the training episodes are used: the last ``--held-out-fraction`` of the store's episodes of the simulator's
env id stay out, as ``train_world_model.py`` and ``python -m dws_gym.evaluation`` split them. The world model is not
changed (except its stepping threshold with ``--keep-below``). The command is appended to the simulator's recorded
training commands; its recorded fidelity tables are dropped, since the head they scored is gone: re-score with
``python -m dws_gym.evaluation --record``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from dws_gym.flags import usage_error

__all__ = ["RetrainArgs", "cli", "main", "retrain_reward_head"]


@dataclass
class RetrainArgs:
    """Train a saved simulator's reward head again (optionally on its own dreams) and save the simulator."""

    simulator: str
    """simulator folder or Hugging Face Hub repo id"""
    data: str
    """trajectory store holding episodes of the simulator's env id"""
    out: str
    """folder to write the simulator with its new head (may be the --simulator folder: it is replaced atomically)"""
    dream_share: float = 0.5
    """share of each batch whose next frame the world model dreamed (0: real frames only)"""
    dream_windows: int = 2048
    """real training windows dreamed"""
    dream_horizon: int = 8
    """dreamed steps per window (labels drift as a dream leaves the real game)"""
    keep_below: float | None = None
    """set the world model's stepping threshold (`keep_below`: a pixel that changes less stays as it was) before
    dreaming, and save it: the head then learns the dreams it will score"""
    steps: int = 1000
    """optimiser steps"""
    batch_size: int = 64
    """transitions per step"""
    learning_rate: float = 1e-3
    """AdamW learning rate"""
    rare_fraction: float = 0.15
    """share of each batch (real and dreamed parts alike) drawn from transitions with a reward or a termination"""
    prior_correction: bool = True
    """predict with the real data's class prior, not the oversampled batches' (logit offsets)"""
    depth: int | None = None
    """depth of the new head (self- and cross-attention block pairs); default: the simulator's head's"""
    memory_frames: int | None = None
    """how many of the newest context frames the new head's cross-attention reads (1..K; 1 is the cheapest step);
    default: the simulator's head's"""
    patch_size: int | None = None
    """pixels per side of the new head's patch tokens (a power of two >= 2; 16 gives a quarter of 8's tokens and a
    cheaper step); default: the simulator's head's"""
    held_out_fraction: float = 0.1
    """the last fraction of the env id's episodes is left out (as train_world_model.py holds it out)"""
    train: bool = True
    """train a new head (--no-train keeps the simulator's head: with --calibrate-windows, only its payment
    threshold changes)"""
    candidates: int = 1
    """heads trained (seeds seed, seed + 1, ...) on the same dreams; the one with the best precision on the
    calibration dreams at the real payment rate is kept (needs --calibrate-windows)"""
    calibrate_windows: int = 0
    """> 0: dream this many uniformly drawn training windows (--dream-horizon steps each, drawn apart from the
    head's) and set the head's payment threshold so that it pays on them as often as the real game did (0: off)"""
    seed: int = 1
    """seeds the windows, the batches, the dream's noise and the head's initialisation"""
    device: str = "cpu"
    """where the world model dreams and the head trains: cpu | cuda | cuda:<i>"""
    progress: bool = True
    """show progress bars"""


def _check(args: RetrainArgs) -> None:
    if not (math.isfinite(args.dream_share) and 0 <= args.dream_share < 1):
        usage_error(f"--dream-share must be in [0, 1), got {args.dream_share}")
    if not (math.isfinite(args.rare_fraction) and 0 <= args.rare_fraction < 1):
        usage_error(f"--rare-fraction must be in [0, 1), got {args.rare_fraction}")
    for name in ("dream_windows", "dream_horizon", "steps", "batch_size", "candidates"):
        if getattr(args, name) < 1:
            usage_error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        usage_error(f"--learning-rate must be > 0, got {args.learning_rate}")
    if args.calibrate_windows < 0:
        usage_error(f"--calibrate-windows must be >= 0, got {args.calibrate_windows}")
    if args.candidates > 1 and not args.calibrate_windows:
        usage_error("--candidates > 1 picks the best head on the calibration dreams: pass --calibrate-windows too")
    if args.candidates > 1 and not args.train:
        usage_error("--candidates > 1 trains several heads; it cannot be combined with --no-train")
    if args.keep_below is not None and not (math.isfinite(args.keep_below) and 0 <= args.keep_below < 1):
        usage_error(f"--keep-below must be in [0, 1), got {args.keep_below}")
    for name in ("depth", "memory_frames", "patch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            usage_error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if value is not None and not args.train:
            usage_error(f"--{name.replace('_', '-')} shapes a new head; it cannot be combined with --no-train")


def _new_head_config(config: Any, args: RetrainArgs) -> Any:
    """A fresh head's config: the simulator head's, untrained offsets, reshaped by ``--depth`` / ``--memory-frames`` /
    ``--patch-size`` (a usage error if the shape does not fit the frames)."""
    shape = {name: getattr(args, name) for name in ("depth", "memory_frames", "patch_size")
             if getattr(args, name) is not None}
    try:
        return dataclasses.replace(type(config).from_dict(config.to_dict()), reward_logit_offset=None,
                                   termination_logit_offset=0.0, **shape)
    except ValueError as e:
        usage_error(f"the new head's shape: {e}")


def retrain_reward_head(args: RetrainArgs, command: str | None = None) -> Path:
    """Do what ``args`` describes; returns the written simulator folder."""
    from dws_gym.cpu_allocator import keep_freed_memory
    from dws_gym.data import TrajectoryStore, env_episodes, split_episodes
    from dws_gym.models.reward_training import (
        calibrate_reward_rate,
        calibration_dreams,
        reward_ends_episode_in,
        sign_values_from_rewards,
    )
    from dws_gym.simulator import Simulator

    sim = Simulator.from_pretrained(args.simulator, device=args.device)
    if sim.device.type == "cpu":  # it dreams and trains on the CPU: keep freed memory (dws_gym.cpu_allocator)
        print(keep_freed_memory(), file=sys.stderr)
    if args.memory_frames is not None and args.memory_frames > sim.context_frames:
        usage_error(f"--memory-frames {args.memory_frames} exceeds the simulator's {sim.context_frames} context frames")
    if args.train:
        _new_head_config(sim.reward_head.config, args)  # refuse a shape that does not fit before any work
    if args.keep_below is not None:
        if not hasattr(sim.world_model.config, "keep_below"):
            usage_error(f"--keep-below: the {type(sim.world_model).__name__} of {args.simulator} has no keep_below "
                        "threshold")
        sim.world_model.config.keep_below = float(args.keep_below)
    store = TrajectoryStore(args.data)
    try:
        ours = env_episodes(store, sim.config.env_id)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    train_ids, _ = split_episodes(store, args.held_out_fraction, episode_ids=ours)
    k = sim.context_frames
    transitions = store.transitions(episode_ids=train_ids, frame_stack=k, keep_unknown_final=True)
    if tuple(store.meta(train_ids[0]).obs_shape) != tuple(sim.config.obs_shape):
        raise SystemExit(f"{args.data} holds {store.meta(train_ids[0]).obs_shape} frames but the simulator makes "
                         f"{tuple(sim.config.obs_shape)}; pass a store collected at the simulator's frame size.")
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    calibration_set = None
    if args.calibrate_windows:
        t0 = time.time()
        calibration_set = calibration_dreams(sim.world_model, store.clips(k, args.dream_horizon, episode_ids=train_ids),
                                             args.calibrate_windows, args.seed, progress=args.progress)
        paid = int((calibration_set.step_records()["reward"] != 0).sum())
        print(f"calibration: {len(calibration_set)} dreamed transitions of {args.calibrate_windows} uniformly drawn "
              f"training windows ({paid} with a real reward) in {time.time() - t0:.0f} s", flush=True)
        if paid == 0:
            raise SystemExit(f"none of the {len(calibration_set)} calibration transitions has a reward; raise "
                             "--calibrate-windows")
    calibration = None
    if args.train:
        head, calibration = _train_heads(args, sim, store, train_ids, transitions, rng, calibration_set)
    else:
        head = sim.reward_head
        if calibration_set is not None:
            calibration = calibrate_reward_rate(head, calibration_set)
            print(f"calibrated the simulator's head: {calibration.describe()}", flush=True)
    records = transitions.step_records()
    if head.config.mode == "sign":  # pay what the game pays (CoinRun's coin: 10) where each sign has one value
        head.set_sign_values(sign_values_from_rewards(records["reward"]))
        print(f"the head pays {head.config.sign_values} for a negative / no / positive reward", flush=True)
    head.config.reward_ends_episode = head.config.mode == "sign" and reward_ends_episode_in(
        records["reward"], records["terminated"], records["truncated"])
    if head.config.reward_ends_episode:
        print("every reward in the data ends its episode: a dreamed reward ends the dream too", flush=True)
    sim.reward_head = head
    training = dict(sim.config.training or {})
    command = command or "python -m dws_gym.retrain_reward_head " + " ".join(sys.argv[1:])
    training["command"] = " && ".join(c for c in (training.get("command"), command) if c)
    if args.train:
        training["reward_head_data"] = (
            f"{args.steps} steps on {len(train_ids)} training episodes of {args.data}"
            + (f", {args.dream_share:.0%} of each batch dreamed by the world model ({args.dream_windows} windows x "
               f"{args.dream_horizon} steps)" if args.dream_share > 0 else ", real frames only")
            + (f"; best of {args.candidates} seeds on the calibration dreams" if args.candidates > 1 else "")
            + f"; head depth {head.config.depth}, {head.config.patch_size} x {head.config.patch_size}-pixel patch "
              f"tokens, cross-attention over the last {head.config.read_frames} of {head.config.context_frames} "
              "context frames")
    if calibration is not None:
        training["reward_head_calibration"] = calibration.card_entry(args.calibrate_windows, args.dream_horizon)
    sim.config.training = training
    sim.config.metrics = {}  # the recorded tables scored the old head
    folder = sim.to("cpu").save_pretrained(args.out)
    print(f"simulator with the new head written to {folder}; score it with python -m dws_gym.evaluation "
          f"--simulator {folder} --data {args.data} --record")
    return folder


def _train_heads(args: RetrainArgs, sim: Any, store: Any, train_ids: Any, transitions: Any, rng: np.random.Generator,
                 calibration_set: Any) -> tuple[Any, Any]:
    """Train ``args.candidates`` heads on the same (optionally dreamed) batches' source; return the kept head and
    its calibration (``None`` without a calibration set)."""
    from dws_gym.models.reward import RewardHead
    from dws_gym.models.reward_training import (
        calibrate_reward_rate,
        fit_reward_head,
        prior_correction,
        reward_head_batches,
        with_dreams,
    )

    k = sim.context_frames
    sample_fn, class_w, pos_w = reward_head_batches(transitions, args.rare_fraction)
    dreamed = None
    if args.dream_share > 0:
        t0 = time.time()
        sample_fn, dreamed = with_dreams(sample_fn, sim.world_model,
                                         store.clips(k, args.dream_horizon, episode_ids=train_ids), args.dream_share,
                                         args.dream_windows, rng, rare_fraction=args.rare_fraction,
                                         generator=torch.Generator(sim.device).manual_seed(args.seed),
                                         progress=args.progress)
        print(f"{len(dreamed)} dreamed transitions from {args.dream_windows} training windows in "
              f"{time.time() - t0:.0f} s", flush=True)
    best, best_cal, best_score = None, None, -math.inf
    for i in range(args.candidates):
        if i:  # candidate 0 continues the command's streams, so --candidates 1 is the plain run
            torch.manual_seed(args.seed + i)
            rng = np.random.default_rng(args.seed + i)
        config = _new_head_config(sim.reward_head.config, args)
        head = RewardHead(config).to(sim.device)
        t0 = time.time()
        logs = fit_reward_head(head, sample_fn, steps=args.steps, lr=args.learning_rate, batch_size=args.batch_size,
                               generator=rng, progress=args.progress, class_weights=class_w, pos_weight=pos_w)
        head.eval()
        print(f"reward head (seed {args.seed + i}): {args.steps} steps in {time.time() - t0:.0f} s, last loss "
              f"{logs[-1]['loss']:.4f}", flush=True)
        if args.prior_correction and args.rare_fraction > 0:
            offsets, t_offset = prior_correction(transitions.step_records(), args.rare_fraction,
                                                 None if dreamed is None else dreamed.step_records(), args.dream_share)
            head.config.reward_logit_offset, head.config.termination_logit_offset = offsets, t_offset
        if calibration_set is None:
            return head, None
        cal = calibrate_reward_rate(head, calibration_set)
        print(f"  calibrated: {cal.describe()}", flush=True)
        score = cal.precision if math.isfinite(cal.precision) else -1.0
        if score > best_score:
            best, best_cal, best_score = head, cal, score
    if args.candidates > 1:
        print(f"kept the head with precision {best_score:.3f} at the real payment rate", flush=True)
    return best, best_cal


def main(argv: list[str] | None = None) -> Path:
    """CLI entry point."""
    args = tyro.cli(RetrainArgs, args=argv)
    _check(args)
    command = "python -m dws_gym.retrain_reward_head " + " ".join(sys.argv[1:] if argv is None else argv)
    return retrain_reward_head(args, command)


def cli() -> None:
    """Console-script entry point (exit status 0 on success)."""
    main()


if __name__ == "__main__":
    cli()
