"""Reward / termination head: rare-event oversampling vs loss weighting, on the same data and budget.

Trains one :class:`~dws_gym.models.reward.RewardHead` per variant on a trajectory store's training episodes (the
same split as ``train_world_model.py``), with the same seed, steps and batch size, then scores every transition of
the held-out episodes with its real next frame: precision and recall of a positive reward, a negative reward and
a termination. With --write-results the table is appended to bench/RESULTS.md, whatever it shows.

Variants:

* ``weighted``: uniform batches, cross-entropy weighted by clipped inverse class frequency (at most 10) and
  termination ``pos_weight`` (at most 10), the loss-side remedy;
* ``oversample f``: a share ``f`` of each batch drawn from the transitions with a non-zero reward or a termination
  (:class:`~dws_gym.models.reward_training.RareEventSampler`), unweighted loss (``train_world_model.py``'s default,
  f = 0.15).

    python bench/reward_head.py --data data/breakout --write-results
    python bench/reward_head.py --data data/breakout --steps 1000 --fractions 0.15 0.25 0.5 --threads 1
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from dws_gym.data import split_episodes
from dws_gym.data.store import TrajectoryStore
from dws_gym.metrics import precision_recall
from dws_gym.models.reward import RewardConfig, RewardHead
from dws_gym.models.reward_training import fit_reward_head, reward_head_batches

TARGETS = ("reward>0", "reward<0", "terminated")


def score(head: RewardHead, data, batch_size: int = 256) -> dict[str, tuple[float, float, int, int]]:
    """Precision, recall, support and predicted count of each target over every transition of ``data``."""
    pred_r, true_r, pred_t, true_t = [], [], [], []
    head.eval()
    for start in range(0, len(data), batch_size):
        batch = data.get_batch(np.arange(start, min(start + batch_size, len(data))))
        reward, term = head.predict(batch["obs"], batch["action"], batch["next_obs"][:, -1])
        pred_r.append(reward.numpy())
        pred_t.append(term.numpy())
        true_r.append(batch["reward"])
        true_t.append(batch["terminated"])
    pr, tr, pt, tt = (np.concatenate(x) for x in (pred_r, true_r, pred_t, true_t))
    out = {}
    for name, pred, true in (("reward>0", pr > 0, tr > 0), ("reward<0", pr < 0, tr < 0), ("terminated", pt, tt)):
        m = precision_recall(pred, true)
        out[name] = (m.precision, m.recall, m.support, m.predicted)
    return out


@dataclass
class Args:
    data: str
    """trajectory store (e.g. from python -m dws_gym.collect)"""
    env_id: str | None = None
    """use only this env id's episodes (default: the first episode's)"""
    steps: int = 1000
    """optimiser steps per variant"""
    batch_size: int = 64
    """transitions per step"""
    lr: float = 1e-3
    """AdamW learning rate (train_world_model.py's default)"""
    context_frames: int = 4
    """frames each transition stacks"""
    held_out_fraction: float = 0.1
    """fraction of episodes (the newest) scored, not trained on"""
    fractions: tuple[float, ...] = (0.15,)
    """oversampling shares to compare"""
    weighted: bool = True
    """also train the loss-weighted baseline (--no-weighted skips it)"""
    seed: int = 1
    """seed of every variant"""
    threads: int | None = None
    """torch CPU threads"""
    write_results: bool = False
    """append the table to --results-file"""
    results_file: Path = Path(__file__).resolve().parent / "RESULTS.md"
    """the results file"""


def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.threads:
        torch.set_num_threads(args.threads)

    store = TrajectoryStore(args.data)
    ids = store.episode_ids()
    if not ids:
        raise SystemExit(f"{args.data} holds no episodes; collect some with python -m dws_gym.collect")
    env_id = args.env_id or store.meta(ids[0]).env_id
    ours = [i for i in ids if store.meta(i).env_id == env_id]
    train_ids, held_ids = split_episodes(store, args.held_out_fraction, episode_ids=ours)
    meta = store.meta(train_ids[0])
    k = args.context_frames
    train = store.transitions(episode_ids=train_ids, frame_stack=k, keep_unknown_final=True)
    held = store.transitions(episode_ids=held_ids, frame_stack=k)
    stats = train.step_records()
    rare_share = float(((stats["reward"] != 0) | stats["terminated"]).mean())
    print(f"{len(train)} training / {len(held)} held-out transitions of {env_id}; rare share {rare_share:.2%}",
          file=sys.stderr)

    variants: list[tuple[str, float]] = [] if not args.weighted else [("weighted (clip 10)", 0.0)]
    variants += [(f"oversample {f:g}", f) for f in args.fractions]
    rows = []
    for name, fraction in variants:
        torch.manual_seed(args.seed)
        head = RewardHead(RewardConfig(context_frames=k, num_actions=meta.action_space["n"],
                                       frame_shape=tuple(meta.obs_shape)))
        sample_fn, class_w, pos_w = reward_head_batches(train, fraction)
        t0 = time.perf_counter()
        fit_reward_head(head, sample_fn, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        generator=np.random.default_rng(args.seed), progress=False,
                        class_weights=class_w, pos_weight=pos_w)
        seconds = time.perf_counter() - t0
        rows.append((name, score(head, held), seconds))
        print(f"{name}: {rows[-1][1]} ({seconds:.0f} s)", file=sys.stderr)

    header = "| variant | " + " | ".join(f"{t} precision | {t} recall" for t in TARGETS) + " | train s |"
    lines = [header, "|" + "---|" * (2 * len(TARGETS) + 2)]
    for name, result, seconds in rows:
        cells = [f"{result[t][0]:.3f} | {result[t][1]:.3f}" for t in TARGETS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    supports = ", ".join(f"{t}: {rows[0][1][t][2]}" for t in TARGETS)
    table = "\n".join(lines)
    print(table)
    if args.write_results:
        date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python bench/reward_head.py " + shlex.join(sys.argv[1:])
        with open(args.results_file, "a", encoding="utf-8") as f:
            f.write(
                f"\n## Reward head: oversampling vs loss weights ({date})\n\nCommand: `{command}` "
                f"({torch.get_num_threads()} torch threads)  \n"
                f"Same seed, {args.steps} steps of {args.batch_size} transitions at lr {args.lr:g} per variant; scored "
                f"on all {len(held)} held-out transitions with their real next frame ({supports} positives); "
                f"rare (non-zero reward or termination) share of the training data {rare_share:.2%}. "
                "Precision is nan when nothing was predicted.\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    main()
