"""Minibatches for offline RL, read from memory-mapped trajectory stores: real data plus synthesized data.

A million 64x64 frames are 12 GB, so nothing is loaded up front: :class:`OfflineReplay` keeps only the per-step
records and reads each minibatch's frames (and ``next_obs`` by index) from the stores' memory maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dws_gym.data import TrajectoryStore, TransitionDataset

__all__ = ["OfflineReplay", "StoreInfo", "describe_store"]


@dataclass(frozen=True)
class StoreInfo:
    """What a store holds, read from its episodes' metadata."""

    env_id: str
    obs_shape: tuple[int, ...]
    num_actions: int
    action_meanings: list[str] | None
    episodes: int
    steps: int
    synthetic_episodes: int
    policies: list[str]
    simulators: list[str]


def describe_store(store: TrajectoryStore) -> StoreInfo:
    """Summarise ``store``; raises ``ValueError`` when it is empty, mixes games, or has no discrete action space."""
    ids = store.episode_ids()
    if not ids:
        raise ValueError(f"{store.root} holds no episode; collect or synthesize into it first.")
    metas = [store.meta(i) for i in ids]
    env_ids = sorted({m.env_id for m in metas})
    if len(env_ids) != 1:
        raise ValueError(f"{store.root} mixes episodes of several envs {env_ids}; offline RL needs one game per store.")
    first = metas[0]
    if not first.discrete:
        raise ValueError(f"{store.root} has a continuous action space; the offline scripts take discrete actions.")
    return StoreInfo(
        env_id=env_ids[0], obs_shape=tuple(first.obs_shape), num_actions=int(first.action_space["n"]),
        action_meanings=first.action_meanings, episodes=len(ids), steps=store.num_steps,
        synthetic_episodes=sum(bool(m.synthetic) for m in metas),
        policies=sorted({m.policy for m in metas}),
        simulators=sorted({m.source_simulator for m in metas if m.source_simulator}),
    )


def _bootstrappable(data: TransitionDataset, terminal_on_truncation: bool) -> np.ndarray | None:
    """The transitions a TD target can use, or ``None`` for all of them.

    Left out: a time-limit end (truncated, not terminated, no reward) whose next frame was lost (Procgen's 1000-step
    timeout; an ALE frame cap). Its value cannot be bootstrapped, and a terminal target would teach the critic that
    the time limit ends the game. An end that pays (a coin on the last allowed step) stays, as terminal.
    """
    if terminal_on_truncation:  # every truncation is terminal by request: nothing to bootstrap
        return None
    rec = data.step_records()
    drop = ~data.next_obs_known() & rec["truncated"] & ~rec["terminated"] & (rec["reward"] == 0)
    return np.flatnonzero(~drop) if drop.any() else None


def _draw(data: TransitionDataset, ids: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` transitions of ``data`` drawn uniformly with replacement, among ``ids`` when given."""
    if ids is None:
        return data.draw(n, rng)
    if len(ids) == 0:
        raise ValueError("no usable transitions: every transition is a time-limit end without a next frame")
    return ids[rng.integers(0, len(ids), size=int(n))]


class OfflineReplay:
    """Uniform minibatches of transitions from a real store, optionally mixed with a synthetic one.

    Every step with a following frame is a transition; so is the last step of an episode whose final frame is lost
    (Procgen; an ALE game over): its reward counts and it is terminal (``next_obs`` then repeats the last stored frame
    and is never used). A time-limit end without a final frame is never drawn: its value cannot be bootstrapped
    (:attr:`left_out` counts them).

    Args:
        dataset: the real store (or its folder).
        synthetic: a store of synthesized transitions (``offline/augment.py``), or ``None``.
        synthetic_fraction: share of every minibatch drawn from ``synthetic``; ``None`` draws uniformly from the
            union (for a 1M + 1M dataset: half), so adding data never changes the number of gradient steps.
        frame_stack: frames per observation (``(k, H, W, C)`` when ``k > 1``; episode starts repeat frame 0).
        terminal_on_truncation: treat truncated ends as terminal too (no bootstrap).

    Raises:
        ValueError: an empty store, stores of different games / frame shapes / action counts, a ``synthetic`` store
            whose episodes are not marked synthetic, a ``dataset`` holding synthetic episodes, or a fraction outside
            ``[0, 1]``.
    """

    def __init__(self, dataset: TrajectoryStore | str, synthetic: TrajectoryStore | str | None = None, *,
                 synthetic_fraction: float | None = None, frame_stack: int = 1,
                 terminal_on_truncation: bool = False) -> None:
        real = dataset if isinstance(dataset, TrajectoryStore) else TrajectoryStore(dataset)
        self.info = describe_store(real)
        if self.info.synthetic_episodes:  # they would be counted, and learned from, as real
            raise ValueError(f"--dataset {real.root} holds {self.info.synthetic_episodes} episodes marked synthetic: "
                             "pass real data only as --dataset and offline/augment.py's output as --synthetic-dataset.")
        self.real = TransitionDataset(real, frame_stack=frame_stack, keep_unknown_final=True)
        self.synthetic: TransitionDataset | None = None
        self.synthetic_info: StoreInfo | None = None
        if synthetic is not None:
            syn = synthetic if isinstance(synthetic, TrajectoryStore) else TrajectoryStore(synthetic)
            sinfo = describe_store(syn)
            for field, a, b in (("env id", self.info.env_id, sinfo.env_id),
                                ("frame shape", self.info.obs_shape, sinfo.obs_shape),
                                ("action count", self.info.num_actions, sinfo.num_actions)):
                if a != b:
                    raise ValueError(f"--synthetic-dataset {syn.root} does not match --dataset {real.root}: {field} "
                                     f"{b} vs {a}. Synthesize it with a simulator of the same game.")
            if sinfo.synthetic_episodes != sinfo.episodes:
                raise ValueError(f"{syn.root} holds {sinfo.episodes - sinfo.synthetic_episodes} episodes not marked "
                                 "synthetic: pass real data as --dataset and offline/augment.py's output as "
                                 "--synthetic-dataset.")
            self.synthetic = TransitionDataset(syn, frame_stack=frame_stack, keep_unknown_final=True)
            self.synthetic_info = sinfo
        if synthetic_fraction is not None and not 0.0 <= synthetic_fraction <= 1.0:
            raise ValueError(f"synthetic_fraction must lie in [0, 1] (or be None), got {synthetic_fraction}")
        if synthetic_fraction is None:
            n_syn = 0 if self.synthetic is None else len(self.synthetic)
            synthetic_fraction = n_syn / max(1, n_syn + len(self.real))
        elif self.synthetic is None and synthetic_fraction > 0:
            raise ValueError("synthetic_fraction > 0 needs a synthetic store.")
        self.synthetic_fraction = float(synthetic_fraction)
        self.frame_stack = int(frame_stack)
        self.terminal_on_truncation = bool(terminal_on_truncation)
        self._real_ids = _bootstrappable(self.real, self.terminal_on_truncation)
        self._syn_ids = None if self.synthetic is None else _bootstrappable(self.synthetic,
                                                                            self.terminal_on_truncation)
        self.left_out = sum(len(d) - len(i) for d, i in ((self.real, self._real_ids),
                                                          (self.synthetic, self._syn_ids)) if i is not None)
        """Time-limit ends without a next frame, never drawn (see :func:`_bootstrappable`)."""

    def __len__(self) -> int:
        return len(self.real) + (0 if self.synthetic is None else len(self.synthetic))

    def _read(self, data: TransitionDataset, indices: np.ndarray) -> dict[str, np.ndarray]:
        batch = data.get_batch(indices)
        done = batch["terminated"] | ~batch["next_obs_known"]
        if self.terminal_on_truncation:
            done = done | batch["truncated"]
        return {"obs": batch["obs"], "action": batch["action"], "reward": batch["reward"],
                "next_obs": batch["next_obs"], "done": done}

    def draw(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The transitions of one minibatch, ``(real_indices, synthetic_indices)``, without reading a frame.

        Cheap; :meth:`read` does the disk work, so the two can run in different threads
        (:class:`~dws_gym.data.read_ahead.ReadAhead`).
        """
        if batch_size <= 0:  # here, not in sample(): read-ahead callers draw without sampling
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n_syn = int(round(batch_size * self.synthetic_fraction)) if self.synthetic is not None else 0
        empty = np.zeros(0, dtype=np.int64)
        real = _draw(self.real, self._real_ids, batch_size - n_syn, rng) if batch_size - n_syn > 0 else empty
        syn = _draw(self.synthetic, self._syn_ids, n_syn, rng) if n_syn and self.synthetic is not None else empty
        return real, syn

    def read(self, drawn: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        """The minibatch of :meth:`draw`'s indices, read from the stores' memory maps."""
        real, syn = drawn
        parts = [self._read(self.real, real)] if len(real) else []
        if len(syn):
            parts.append(self._read(self.synthetic, syn))
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out["synthetic"] = np.arange(len(real) + len(syn)) >= len(real)
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A minibatch: ``obs`` / ``next_obs`` uint8, ``action`` int64, ``reward`` float32 (raw), ``done`` bool and
        ``synthetic`` bool, each with ``batch_size`` rows; the synthetic share is ``round(batch_size * fraction)``."""
        return self.read(self.draw(batch_size, rng))

    @staticmethod
    def to_torch(batch: dict[str, np.ndarray], device: torch.device | str) -> dict[str, torch.Tensor]:
        """Tensors on ``device``: frames stay uint8 (the networks preprocess them), ``done`` becomes float32."""
        out: dict[str, Any] = {}
        for k, v in batch.items():
            t = torch.from_numpy(np.ascontiguousarray(v))
            if k in ("done", "reward"):
                t = t.float()
            out[k] = t.to(device, non_blocking=True)
        return out
