"""Training side of the reward / termination head: batch sources, balancing weights and the fitting loop.

Rewards and terminations are rare in real data. Two remedies, used one at a time (:func:`reward_head_batches`
picks one): clipped inverse-frequency loss weights from the whole dataset (:func:`balance_weights_from_data`), or
:class:`RareEventSampler` batches in which a fixed share are rare transitions, trained unweighted and corrected
afterwards for the prior shift they cause (:func:`prior_correction`, stored as the head's logit offsets).
:func:`fit_reward_head` trains a :class:`~dws_gym.models.reward.RewardHead` with AdamW on either.

In a dream the head scores frames the world model drew, not real ones: a brick that breaks is drawn fainter, and
long dreams gather artefacts a head trained only on real frames may read as events. :class:`DreamedTransitions`
holds transitions whose next frames the world model dreamed open loop from real windows under the real actions,
labelled with the real rewards and terminations; :func:`mixed_batches` puts a share of them in every batch.
:func:`calibrate_reward_rate` then sets the head's payment threshold so that, on dreams of uniformly drawn training
windows, it pays as often as the real game did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dws_gym.models.reward import (
    SIGN_VALUES,
    ArrayLike,
    RewardHead,
    class_balanced_weights,
    reward_to_sign_class,
    termination_pos_weight,
)

__all__ = [
    "DreamedTransitions",
    "RareEventSampler",
    "RateCalibration",
    "balance_weights_from_data",
    "calibrate_reward_rate",
    "calibration_dreams",
    "fit_reward_head",
    "mixed_batches",
    "prior_correction",
    "reward_ends_episode_in",
    "reward_head_batches",
    "reward_margins",
    "sign_values_from_rewards",
    "with_dreams",
]


def sign_values_from_rewards(rewards: ArrayLike) -> tuple[float, float, float]:
    """What a sign-mode head should pay for each sign class, read from the training rewards.

    A sign whose non-zero rewards all have one value keeps it (Procgen CoinRun's coin pays 10, so the dream pays
    10, not 1); a sign with several values (Breakout's bricks pay 1, 4 or 7) or none in the data pays ``-1`` /
    ``+1``, the clipped reward agents train on in Atari. The result goes to ``RewardConfig.sign_values``.

    Raises:
        ValueError: non-finite rewards.
    """
    r = np.asarray(rewards.detach().cpu() if isinstance(rewards, torch.Tensor) else rewards, np.float64).reshape(-1)
    if not np.isfinite(r).all():
        raise ValueError("rewards contain NaN or inf")
    values = list(SIGN_VALUES)
    for cls, part in ((0, r[r < 0]), (2, r[r > 0])):
        distinct = np.unique(part)
        if len(distinct) == 1:
            values[cls] = float(distinct[0])
    return values[0], values[1], values[2]


def reward_ends_episode_in(rewards: ArrayLike, terminated: ArrayLike, truncated: ArrayLike | None = None) -> bool:
    """Whether the data's game ends on every reward: at least one non-zero reward, and every non-zero reward on the
    last step of its episode (Procgen CoinRun and Ninja: True; Breakout: False). An end counts whether it is a
    termination or a truncation: Procgen ends an episode at its time limit even on the step that collects the coin,
    and such a step is recorded as truncated. The result goes to ``RewardConfig.reward_ends_episode``."""
    def flat(x: ArrayLike) -> np.ndarray:
        return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x).reshape(-1)

    r, ends = flat(rewards).astype(np.float64), flat(terminated).astype(bool)
    if r.shape != ends.shape:
        raise ValueError(f"rewards and terminated must have one entry per step, got {r.shape} and {ends.shape}")
    if truncated is not None:
        trunc = flat(truncated).astype(bool)
        if trunc.shape != r.shape:
            raise ValueError(f"rewards and truncated must have one entry per step, got {r.shape} and {trunc.shape}")
        ends = ends | trunc
    paid = r != 0
    return bool(paid.any() and ends[paid].all())


def balance_weights_from_data(
    rewards: ArrayLike, terminated: ArrayLike, max_class_weight: float = 10.0, max_pos_weight: float = 10.0
) -> tuple[list[float], float]:
    """Dataset-level balancing weights, to put in a :class:`~dws_gym.models.reward.RewardConfig` or pass to
    :meth:`RewardHead.loss`.

    Args:
        rewards: raw rewards ``(N,)`` of the training transitions (numpy or torch).
        terminated: their termination flags ``(N,)``.

    Returns:
        ``(class_weights, pos_weight)``: three sign-class weights (see :func:`class_balanced_weights`) and the
        termination ``pos_weight`` (see :func:`termination_pos_weight`).
    """
    r = torch.as_tensor(np.asarray(rewards) if not isinstance(rewards, torch.Tensor) else rewards).reshape(-1)
    t = torch.as_tensor(np.asarray(terminated) if not isinstance(terminated, torch.Tensor) else terminated)
    if r.numel() == 0:
        raise ValueError("rewards is empty; balancing weights need at least one transition")
    if not bool(torch.isfinite(r.to(torch.float64)).all()):
        raise ValueError("rewards contain NaN or inf")
    counts = torch.bincount(reward_to_sign_class(r.to(torch.float64)), minlength=3)
    weights = class_balanced_weights(counts, max_class_weight)
    return [float(w) for w in weights], termination_pos_weight(t, max_pos_weight)


class RareEventSampler:
    """Batches of transitions in which a fixed share are rare events: a non-zero reward or a termination.

    Drawing uniformly, a batch of 64 Atari transitions holds a rewarded step about every other batch and a game over
    every few dozen, so a head sees few of the events it must learn within a short budget, however the loss weights
    them. This sampler draws ``round(rare_fraction * n)`` items uniformly from the rare transitions and the rest
    uniformly from all of them (with replacement), so every batch carries examples of both.

    Oversampling shifts the head's prior towards the rare classes (by about ``rare_fraction / rare share`` of the
    data), the same direction as loss weights; train with unit weights (``class_weights=(1, 1, 1)``,
    ``pos_weight=1``) rather than stacking both.

    Args:
        dataset: a transition view with ``step_records()`` and ``get_batch(indices)`` and ``len()`` (a
            :class:`dws_gym.data.views.TransitionDataset`).
        rare_fraction: share of each batch drawn from the rare transitions, in ``[0, 1)``; 0 samples uniformly.
            With no rare transition in the data every batch is drawn uniformly.
    """

    def __init__(self, dataset: Any, rare_fraction: float = 0.15) -> None:
        if not (math.isfinite(rare_fraction) and 0.0 <= rare_fraction < 1.0):
            raise ValueError(f"rare_fraction must be in [0, 1), got {rare_fraction!r}")
        if len(dataset) == 0:
            raise ValueError("the dataset has no transitions to sample")
        records = dataset.step_records()
        rare = (np.asarray(records["reward"]) != 0) | np.asarray(records["terminated"], dtype=bool)
        self.dataset = dataset
        self.rare_fraction = float(rare_fraction)
        self.rare_indices = np.flatnonzero(rare)
        """Indices (into ``dataset``) of the transitions with a non-zero reward or a termination."""

    def rare_count(self, n: int) -> int:
        """How many of a batch of ``n`` are drawn from the rare transitions."""
        return int(round(self.rare_fraction * n)) if len(self.rare_indices) else 0

    def indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Dataset indices of one batch of ``n`` (rare draws first)."""
        k = self.rare_count(n)
        rare = self.rare_indices[rng.integers(0, len(self.rare_indices), size=k)] if k else np.zeros(0, np.int64)
        return np.concatenate([rare, rng.integers(0, len(self.dataset), size=int(n) - k)])

    def __call__(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One batch of ``n`` transitions, as the dataset's ``get_batch`` returns it (for :func:`fit_reward_head`)."""
        return self.dataset.get_batch(self.indices(n, rng))


class DreamedTransitions:
    """Transitions whose next frames a world model dreamed, labelled with the real rewards and terminations.

    ``num_windows`` real windows of ``K`` context frames and ``T`` further steps are drawn from ``clips`` and
    dreamed open loop: the world model generates frame ``K + h`` from the ``K`` frames before it (real ones first,
    then its own) under the real action, as the simulator steps. Each dreamed frame becomes one transition, with
    the reward and termination the real game gave for that step. Steps past an episode's end are left out; the last
    step of an episode whose final frame is unknown (Procgen) is kept, since its label is known. A window needs one
    real target frame, so that step is dreamed at ``h >= 2`` only (never with ``T = 1``): keep ``T`` a few steps.

    The labels stay right as long as the dream follows the real game, which it does best at small ``h``: keep
    ``T`` short (the default 8 is where the shipped Breakout ball still lies within 4 px of the real one in most
    frames). A dreamed event one step off the real one is then a wrong label; the head learns the dream's typical
    renderings of events and non-events, not its exact timing.

    The object is a transition view (``len``, ``get_batch``, ``sample``, ``step_records``), so
    :class:`RareEventSampler` and :func:`reward_head_batches` balance it as they balance real data.

    Args:
        world_model: a model with ``sample_next(frames, actions, action, generator=...)`` (uint8 frames in and
            out) and ``config.context_frames`` equal to ``clips.context``, e.g. a
            :class:`~dws_gym.models.unet.UNetWorldModel`. Call under the precision (autocast) you step with.
        clips: a :class:`~dws_gym.data.views.ClipDataset` of the training episodes; its ``horizon`` is ``T``.
        num_windows: windows to dream.
        rng: draws the windows.
        rare_window_fraction: share of the windows drawn among those with a non-zero reward or a termination in
            their dreamed steps (if any), so the rare events are present at all; the rest are drawn uniformly.
        generator: the sampling noise.
        batch_size: windows per ``sample_next`` call (bounds activation memory).
        progress: show a progress bar.
    """

    def __init__(
        self,
        world_model: Any,
        clips: Any,
        num_windows: int,
        rng: np.random.Generator,
        *,
        rare_window_fraction: float = 0.5,
        generator: torch.Generator | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        k, horizon = int(clips.context), int(clips.horizon)
        if int(world_model.config.context_frames) != k:
            raise ValueError(f"the world model conditions on {world_model.config.context_frames} frames but the "
                             f"clips have {k} context frames; build the ClipDataset with context={world_model.config.context_frames}")
        for name, v in (("num_windows", num_windows), ("batch_size", batch_size)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (math.isfinite(rare_window_fraction) and 0.0 <= rare_window_fraction <= 1.0):
            raise ValueError(f"rare_window_fraction must be in [0, 1], got {rare_window_fraction!r}")
        if len(clips) == 0:
            raise ValueError("the clip dataset has no windows to dream from")
        # No frame is read. The last step of an episode without a final frame (Procgen's coin) is kept: the dream
        # renders a frame for it, and its reward is often the only one the episode pays.
        records = clips.step_records(frameless_final=True)
        dreamed = slice(k - 1, None)  # step j leads to frame j + 1: the dreamed frames K..L-1 come from steps K-1..
        rare = ((records["rewards"][:, dreamed] != 0) | records["terminated"][:, dreamed]).any(axis=1)
        rare_ids = np.flatnonzero(rare)
        n_rare = int(round(rare_window_fraction * num_windows)) if len(rare_ids) else 0
        chosen = np.concatenate([rare_ids[rng.integers(0, len(rare_ids), size=n_rare)] if n_rare else
                                 np.zeros(0, np.int64), rng.integers(0, len(clips), size=int(num_windows) - n_rare)])
        chosen.sort()  # neighbouring windows share disk pages

        from tqdm.auto import tqdm

        device = world_model.device
        parts: list[np.ndarray] = []
        for a in tqdm(range(0, len(chosen), batch_size), disable=not progress, desc="dreaming reward-head data"):
            batch = clips.get_batch(chosen[a:a + batch_size])
            frames = torch.from_numpy(batch["frames"]).to(device)
            actions = torch.from_numpy(records["actions"][chosen[a:a + batch_size]]).to(device, torch.int64)
            with torch.no_grad():
                for h in range(horizon):
                    frames[:, k + h] = world_model.sample_next(frames[:, h:h + k], actions[:, h:h + k - 1],
                                                               actions[:, h + k - 1], generator=generator)
            parts.append(frames.cpu().numpy())
        self.context, self.horizon = k, horizon
        self.windows = chosen
        """Indices (into ``clips``) of the dreamed windows, sorted."""
        self.frames = np.concatenate(parts)
        """uint8 ``(num_windows, K + T, H, W, C)``: real context frames, then dreamed ones."""
        chosen_records = {key: v[chosen] for key, v in records.items()}
        valid = chosen_records["step_mask"][:, k - 1:]  # (num_windows, T): dreamed step h is kept iff it is real
        self._window, self._h = np.nonzero(valid)
        self._records = {key: chosen_records[key][:, dreamed][self._window, self._h]
                         for key in ("actions", "rewards", "terminated", "truncated", "life_lost")}

    def __len__(self) -> int:
        return len(self._window)

    def step_records(self, indices: Any = None) -> dict[str, np.ndarray]:
        """``action``, ``reward``, ``terminated``, ``truncated``, ``life_lost`` of the dreamed transitions (the
        real game's records of the same steps)."""
        sel = slice(None) if indices is None else np.asarray(indices, dtype=np.int64)
        return {"action": self._records["actions"][sel], "reward": self._records["rewards"][sel],
                "terminated": self._records["terminated"][sel], "truncated": self._records["truncated"][sel],
                "life_lost": self._records["life_lost"][sel]}

    def get_batch(self, indices: Any) -> dict[str, np.ndarray]:
        """``obs`` ``(n, K, H, W, C)`` (the frames the dream conditioned on), ``next_obs`` ``(n, H, W, C)`` (the
        dreamed frame), ``action``, ``reward``, ``terminated``, ``truncated``, ``life_lost`` and ``dream_step``
        (``h``, 1-based: how many dreamed frames led to this one, itself included)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)}), got range [{idx.min()}, {idx.max()}]")
        w, h = self._window[idx], self._h[idx]
        obs = self.frames[w[:, None], h[:, None] + np.arange(self.context)[None, :]]
        return {"obs": obs, "next_obs": self.frames[w, h + self.context], **self.step_records(idx),
                "dream_step": h + 1}

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` dreamed transitions drawn uniformly with replacement."""
        return self.get_batch(rng.integers(0, len(self), size=int(n)))


def mixed_batches(
    first: Callable[[int, np.random.Generator], Mapping[str, Any]],
    second: Callable[[int, np.random.Generator], Mapping[str, Any]],
    second_share: float,
) -> Callable[[int, np.random.Generator], dict[str, np.ndarray]]:
    """A batch source drawing ``round(second_share * n)`` of each batch from ``second`` and the rest from ``first``.

    Both return dicts of arrays batched on their first axis (e.g. a real :class:`RareEventSampler` and one over
    :class:`DreamedTransitions`); the mixed batch keeps the keys both have, ``obs``, ``action``, ``reward``,
    ``terminated`` and ``next_obs`` among them.
    """
    if not (math.isfinite(second_share) and 0.0 <= second_share <= 1.0):
        raise ValueError(f"second_share must be in [0, 1], got {second_share!r}")

    def sample(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        m = int(round(second_share * n))
        a = first(int(n) - m, rng) if m < n else None
        b = second(m, rng) if m > 0 else None
        if a is None or b is None:
            return dict(a if b is None else b)
        out = {}
        for key in (k for k in a if k in b):
            x, y = np.asarray(a[key]), np.asarray(b[key])
            if key == "next_obs" and x.ndim != y.ndim:  # a frame-stacked next_obs next to a single frame: its newest
                x, y = (x[:, -1], y) if x.ndim == 5 else (x, y[:, -1])
            out[key] = np.concatenate([x, y])
        return out

    return sample


def with_dreams(
    sample_fn: Callable[[int, np.random.Generator], Mapping[str, Any]],
    world_model: Any,
    clips: Any,
    share: float,
    num_windows: int,
    rng: np.random.Generator,
    *,
    rare_fraction: float = 0.15,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[Callable[[int, np.random.Generator], dict[str, np.ndarray]], DreamedTransitions]:
    """Dream ``num_windows`` windows of ``clips`` (:class:`DreamedTransitions`) and mix them into ``sample_fn``.

    The dreamed part is balanced like real data (:func:`reward_head_batches` with ``rare_fraction``) and makes up
    ``share`` of each batch (:func:`mixed_batches`). Returns the mixed batch source and the dreamed transitions.
    """
    dreamed = DreamedTransitions(world_model, clips, num_windows, rng, generator=generator, progress=progress)
    dream_fn, _, _ = reward_head_batches(dreamed, rare_fraction)
    return mixed_batches(sample_fn, dream_fn, share), dreamed


def _batch_prior(records: Mapping[str, np.ndarray], rare_fraction: float) -> tuple[np.ndarray, float]:
    """The reward-sign prior ``(r < 0, r = 0, r > 0)`` and termination rate of :class:`RareEventSampler` batches
    over these transitions (a share ``f`` of each batch drawn among the rare ones, the rest uniformly)."""
    reward = np.sign(np.asarray(records["reward"], dtype=np.float64))
    term = np.asarray(records["terminated"], dtype=bool)
    n = max(len(reward), 1)
    rare = (reward != 0) | term
    f = float(rare_fraction) if rare.any() else 0.0
    data = np.array([(reward < 0).sum(), (reward == 0).sum(), (reward > 0).sum()], dtype=np.float64) / n
    in_rare = np.array([(reward[rare] < 0).sum(), (reward[rare] == 0).sum(), (reward[rare] > 0).sum()],
                       dtype=np.float64) / max(int(rare.sum()), 1)
    p_term = float(term.mean()) if len(term) else 0.0
    return f * in_rare + (1 - f) * data, f * (float(term[rare].mean()) if rare.any() else 0.0) + (1 - f) * p_term


def prior_correction(records: Mapping[str, np.ndarray], rare_fraction: float,
                     dreamed: Mapping[str, np.ndarray] | None = None,
                     dream_share: float = 0.0) -> tuple[tuple[float, float, float], float]:
    """Logit offsets that undo the prior shift of the head's training batches (sign mode).

    Oversampling rare transitions to a share ``f`` of each batch multiplies the odds the head learns for them
    (about 7x for Breakout's ~2% rewarded steps at ``f = 0.15``), so a head that is right on its training batches
    predicts rewards where the data has none. Adding ``log p_data(c) - log p_train(c)`` to each class logit (and the
    same on the logit scale for termination) is the Bayes correction for a known change of class prior.

    Batches with a dreamed share (:func:`with_dreams`) have a prior of their own: the dreamed windows are drawn with
    half of them around a reward or termination, then balanced with the same ``f``. ``p_train`` is then the mixture
    of both sources' batch priors at ``dream_share``, while ``p_data`` stays the real transitions' rates.

    Args:
        records: ``step_records()`` of the real training transitions (``reward``, ``terminated``).
        rare_fraction: the sampler's ``f`` (0 gives zero offsets).
        dreamed: ``step_records()`` of the dreamed transitions mixed into every batch, if any.
        dream_share: their share of each batch, in ``[0, 1)``.

    Returns:
        ``(reward_offsets for classes (r < 0, r = 0, r > 0), termination_offset)``.
    """
    if not (math.isfinite(dream_share) and 0.0 <= dream_share < 1.0):
        raise ValueError(f"dream_share must be in [0, 1), got {dream_share!r}")
    if dream_share > 0 and dreamed is None:
        raise ValueError("dream_share > 0 needs the dreamed transitions' step_records() as dreamed=")
    if rare_fraction == 0:
        return (0.0, 0.0, 0.0), 0.0
    data, p_data = _batch_prior(records, 0.0)  # f = 0: the real rates
    train, p_train = _batch_prior(records, rare_fraction)
    if dreamed is not None and dream_share > 0:
        d_train, d_p_train = _batch_prior(dreamed, rare_fraction)
        train = (1 - dream_share) * train + dream_share * d_train
        p_train = (1 - dream_share) * p_train + dream_share * d_p_train
    with np.errstate(divide="ignore", invalid="ignore"):
        offsets = np.where((data > 0) & (train > 0), np.log(data / train), 0.0)

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    t_off = logit(p_data) - logit(p_train) if 0 < p_data < 1 and 0 < p_train < 1 else 0.0
    return (float(offsets[0]), float(offsets[1]), float(offsets[2])), float(t_off)


@dataclass(frozen=True)
class RateCalibration:
    """What :func:`calibrate_reward_rate` did (counts over the calibration transitions).

    Attributes:
        shift: added to the no-reward class's logit offset (positive: the head pays less often).
        transitions: calibration transitions scored.
        real_paid: transitions with a non-zero real reward.
        paid_before, paid_after: transitions the head paid on before and after the shift.
        hits_after: paid transitions (after the shift) whose real reward has the same sign.
    """

    shift: float
    transitions: int
    real_paid: int
    paid_before: int
    paid_after: int
    hits_after: int

    @property
    def precision(self) -> float:
        """Share of the head's payments (after the shift) that the real game made too; NaN if it pays nothing."""
        return self.hits_after / self.paid_after if self.paid_after else float("nan")

    @property
    def recall(self) -> float:
        """Share of the real payments the head (after the shift) makes; NaN if the real game paid nothing."""
        return self.hits_after / self.real_paid if self.real_paid else float("nan")

    def describe(self) -> str:
        return (f"no-reward logit offset {self.shift:+.3f}: pays on {self.paid_after} of {self.transitions} "
                f"transitions (before: {self.paid_before}; real: {self.real_paid}), precision {self.precision:.3f}, "
                f"recall {self.recall:.3f}")

    def card_entry(self, num_windows: int, horizon: int) -> str:
        """The line a simulator's card records under ``reward_head_calibration``."""
        return (f"payment threshold set on dreams of {num_windows} uniformly drawn training windows ({horizon} steps "
                f"each) to the real payment rate: {self.describe()}")


def calibration_dreams(world_model: Any, clips: Any, num_windows: int, seed: int, *,
                       progress: bool = True) -> DreamedTransitions:
    """The transitions :func:`calibrate_reward_rate` matches the real rate on: ``num_windows`` windows of ``clips``
    drawn uniformly (no oversampling of rewarded ones) and dreamed open loop, with their own random streams
    (``seed + 10,000``) so that drawing them leaves a training run's windows and batches as they would be without."""
    cal_seed = int(seed) + 10_000
    return DreamedTransitions(world_model, clips, num_windows, np.random.default_rng(cal_seed),
                              rare_window_fraction=0.0,
                              generator=torch.Generator(world_model.device).manual_seed(cal_seed), progress=progress)


@torch.no_grad()
def reward_margins(head: RewardHead, transitions: Any, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """How far the head is from paying on each transition, and with which sign.

    Sign mode, logit offsets included: the margin is the best non-zero class logit minus the no-reward logit (the
    head pays where it is > 0), the sign that of the better non-zero class (``-1`` or ``+1``).
    """
    if head.config.mode != "sign":
        raise ValueError(f"reward margins need a sign-mode head, got mode {head.config.mode!r}")
    head.eval()
    offset = None if head.config.reward_logit_offset is None else torch.tensor(head.config.reward_logit_offset)
    margins, signs = [], []
    for a in range(0, len(transitions), batch_size):
        batch = transitions.get_batch(np.arange(a, min(a + batch_size, len(transitions))))
        next_obs = np.asarray(batch["next_obs"])
        out = head(batch["obs"], batch["action"], next_obs[:, -1] if next_obs.ndim == 5 else next_obs)
        logits = out.reward_logits.float().cpu()
        if offset is not None:
            logits = logits + offset
        margins.append((torch.maximum(logits[:, 0], logits[:, 2]) - logits[:, 1]).numpy())
        signs.append(torch.where(logits[:, 2] >= logits[:, 0], 1.0, -1.0).numpy())
    if not margins:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(margins), np.concatenate(signs)


def calibrate_reward_rate(head: RewardHead, transitions: Any, batch_size: int = 256) -> RateCalibration:
    """Shift the head's no-reward logit offset so that it pays on as many of ``transitions`` as the real game did.

    ``transitions`` should be drawn as the head will meet them, e.g. :class:`DreamedTransitions` of uniformly
    drawn training windows (``rare_window_fraction=0``), labelled with the real rewards. A head trained on
    oversampled batches, and corrected for that prior, can still pay too often or too rarely on the simulator's
    frames (and 1,000 steps of training vary from seed to seed); matching the real rate pins the number of rewards
    the dream pays to the data, and leaves the head's ranking of transitions to decide which ones. The shift sits
    halfway between the margins of the last paid and the first unpaid transition. The head is changed in place
    (``config.reward_logit_offset``), sign mode only.

    Raises:
        ValueError: a two-hot head, no transitions, or no real reward among them (nothing to match).
    """
    records = transitions.step_records()
    real = np.sign(np.asarray(records["reward"], dtype=np.float64))
    if len(real) == 0:
        raise ValueError("calibrate_reward_rate needs transitions, got none")
    n_real = int((real != 0).sum())
    if n_real == 0:
        raise ValueError(f"none of the {len(real)} calibration transitions has a reward: draw more windows")
    margins, signs = reward_margins(head, transitions, batch_size)
    before = int((margins > 0).sum())
    order = np.sort(margins)[::-1]
    upper = float(order[n_real - 1])
    lower = float(order[n_real]) if n_real < len(order) else upper - 1.0
    shift = 0.5 * (upper + lower)
    offsets = list(head.config.reward_logit_offset or (0.0, 0.0, 0.0))
    offsets[1] += shift
    head.config.reward_logit_offset = tuple(float(o) for o in offsets)
    paid = margins > shift
    hits = int((paid & (signs == real)).sum())
    return RateCalibration(shift=shift, transitions=len(real), real_paid=n_real, paid_before=before,
                           paid_after=int(paid.sum()), hits_after=hits)


def reward_head_batches(
    dataset: Any, rare_fraction: float = 0.15
) -> tuple[Callable[[int, np.random.Generator], dict[str, np.ndarray]], list[float], float]:
    """The batch source and loss weights for :func:`fit_reward_head` on a transition view.

    One remedy for the rarity of rewards and terminations, never both: with ``rare_fraction > 0`` a
    :class:`RareEventSampler` and unit weights; with 0 uniform batches (``dataset.sample``) and clipped
    inverse-frequency weights from the whole dataset (:func:`balance_weights_from_data`).

    Returns:
        ``(sample_fn, class_weights, pos_weight)``, to pass on as the same-named arguments of
        :func:`fit_reward_head`.
    """
    if rare_fraction != 0:  # the sampler rejects shares outside [0, 1) and NaN
        return RareEventSampler(dataset, rare_fraction), [1.0, 1.0, 1.0], 1.0
    records = dataset.step_records()
    class_weights, pos_weight = balance_weights_from_data(records["reward"], records["terminated"])
    return dataset.sample, class_weights, pos_weight


def fit_reward_head(
    head: RewardHead,
    sample_fn: Callable[..., Mapping[str, ArrayLike]],
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-4,
    generator: np.random.Generator | None = None,
    progress: bool = True,
    weight_decay: float = 1e-4,
    max_grad_norm: float = 1.0,
    class_weights: ArrayLike | Sequence[float] | None = None,
    pos_weight: float | None = None,
    log_every: int = 1,
) -> list[dict[str, float]]:
    """Train ``head`` with AdamW on batches from ``sample_fn``.

    Args:
        head: the head to train (in place; left in train mode).
        sample_fn: ``sample_fn(n)`` — or ``sample_fn(n, generator)`` when ``generator`` is given, which matches
            ``TransitionDataset.sample(n, rng)`` of a frame-stacked view — returning a batch for
            :meth:`RewardHead.loss`.
        steps: optimizer steps.
        batch_size: transitions per step.
        lr, weight_decay: AdamW settings.
        generator: numpy generator handed to ``sample_fn`` (the loop itself draws no random numbers).
        progress: show a tqdm progress bar.
        max_grad_norm: gradient-norm clip (``<= 0`` disables it).
        class_weights, pos_weight: dataset-level balancing weights passed to :meth:`RewardHead.loss`.
        log_every: keep the logs of every ``log_every``-th step (and the last).

    Returns:
        The kept per-step logs (each with a ``step`` entry).
    """
    if not isinstance(head, RewardHead):
        raise ValueError(f"fit_reward_head trains a RewardHead, got {type(head).__name__}")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    from tqdm.auto import trange

    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    history: list[dict[str, float]] = []
    bar = trange(int(steps), disable=not progress, desc="reward head")
    for step in bar:
        batch = sample_fn(batch_size) if generator is None else sample_fn(batch_size, generator)
        loss, logs = head.loss(batch, class_weights=class_weights, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(head.parameters(), max_grad_norm)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": float(step), **logs})
        if progress:
            bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['reward_accuracy']:.2f}")
    return history
