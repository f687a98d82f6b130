"""Reward and termination *events* of open-loop rollouts, matched one to one with the real ones.

Good frame metrics do not mean the game's events happen. :func:`evaluate_events` dreams held-out windows under their
logged actions and :func:`score_events` matches the rollout's non-zero rewards and terminations with the real ones
within ``±tolerance`` steps (:func:`match_events`), reporting recall and precision per horizon
(:class:`EventResult`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dws_gym.evaluation.acceptance import ACCEPTANCE_HORIZON, check_event_acceptance
from dws_gym.evaluation.open_loop import (
    ArrayLike,
    _as_numpy,
    _check_clips,
    _check_positive_int,
    _json_value,
    _table_dict,
    open_loop_rollout,
)
from dws_gym.metrics import HeldOutTable

if TYPE_CHECKING:
    from dws_gym.simulator import Simulator

__all__ = ["EVENT_TOLERANCE", "EventResult", "evaluate_events", "match_events", "score_events"]

#: Steps by which a dreamed event may be early or late and still match a real one.
EVENT_TOLERANCE: int = 1


def match_events(
    pred: ArrayLike, true: ArrayLike, tolerance: int = EVENT_TOLERANCE
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to real events that lie at most ``tolerance`` steps apart in one window.

    Matching rule (greedy, per window): real events are visited in time order and each takes the **earliest**
    still-unmatched predicted event in ``[t - tolerance, t + tolerance]``. Every real and every predicted event is
    matched at most once, so two dreamed events next to one real event count once, and one dreamed event between
    two real events serves one of them. With the same window width for every real event this greedy rule gives the
    largest possible number of matched pairs. Events of different windows (rows) never match; an event near the
    window's edge can only match inside the window.

    Args:
        pred: bool ``(N, T)`` predicted (dreamed) events, e.g. ``reward != 0``.
        true: bool ``(N, T)`` real events at the same steps.
        tolerance: Largest allowed distance in steps (0: same step only).

    Returns:
        ``(pred_matched, true_matched)``, bool ``(N, T)`` each: which predicted events found a real one (precision
        counts these) and which real events were found (recall counts these).

    Example: a real event at step 5 is matched by a dreamed event at step 4 with ``tolerance=1``, but not by one at
    step 3.
    """
    p = _as_numpy(pred, "pred").astype(bool)
    t = _as_numpy(true, "true").astype(bool)
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"pred and true must both be bool (N, T), got {p.shape} and {t.shape}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0, got {tolerance!r}")
    pred_matched = np.zeros_like(p)
    true_matched = np.zeros_like(t)
    for row in np.flatnonzero(p.any(axis=1) & t.any(axis=1)):
        candidates = np.flatnonzero(p[row])  # ascending
        used = np.zeros(candidates.size, dtype=bool)
        for step in np.flatnonzero(t[row]):  # ascending
            ok = np.flatnonzero(~used & (np.abs(candidates - step) <= tolerance))
            if ok.size:
                used[ok[0]] = True
                pred_matched[row, candidates[ok[0]]] = True
                true_matched[row, step] = True
    return pred_matched, true_matched


def _ratio_or_nan(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass
class EventResult:
    """Reward and termination *events* of open-loop rollouts matched against the real ones (:func:`score_events`).

    An event is a step with a non-zero reward (optionally matched by sign) or a termination. Recall: real events
    with a dreamed event of the same kind within ``±tolerance`` steps in the same window; precision: dreamed events
    with a real one. The matching is one-to-one (:func:`match_events`). Per-horizon rows count an event at step
    ``h`` in row ``h`` (recall by the real event's step, precision by the dreamed event's step); the ``all`` row
    pools every step.

    Life-loss events are not reported: the simulator's step protocol predicts reward and termination only, and a
    termination is not a life loss, so there is no dreamed life loss to score.

    Drawn inside their episodes (:func:`~dws_gym.evaluation.held_out.sample_eval_clips` without ``reach_end``, or
    ``python -m dws_gym.evaluation --no-episode-ends``), held-out windows hold an episode's last step (a game over, a
    Procgen coin) only at the last horizon of the one window ending there, and never where the episode's final frame
    is unknown (Procgen); windows that may reach past the end (the CLI's default) score those events too.

    Attributes:
        table: Columns ``h``, then per kind (``reward``, ``terminated``) ``recall``, ``precision``, ``real``
            (real events) and ``dreamed`` (dreamed events); rows ``h = 1..T`` and ``all``.
        horizon: ``T``.
        num_clips: Windows scored.
        tolerance: Matching tolerance in steps.
        match_sign: Whether reward events matched only events of the same sign.
        arrays: bool ``(N, T)`` per kind: ``{kind}_real``, ``{kind}_dreamed``, ``{kind}_real_matched``,
            ``{kind}_dreamed_matched``.
    """

    table: HeldOutTable
    horizon: int
    num_clips: int
    tolerance: int = EVENT_TOLERANCE
    match_sign: bool = False
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def overall(self, kind: str = "reward") -> dict[str, Any]:
        """The ``all`` row of one kind: ``{"recall", "precision", "real", "dreamed"}``."""
        row = self.table.rows[-1]
        return {name: row[f"{kind} {name}"] for name in ("recall", "precision", "real", "dreamed")}

    def acceptance(self, **kwargs: Any) -> dict[str, bool]:
        """:func:`check_event_acceptance` of these events (keyword arguments are passed on)."""
        return check_event_acceptance(events=self, **kwargs)

    def to_markdown(self) -> str:
        sign = ", same sign" if self.match_sign else ""
        return "\n".join([
            f"{self.num_clips} held-out windows, {self.horizon} open-loop steps under the logged actions. A dreamed "
            f"event (reward != 0{sign}, or termination) matches a real one at most {self.tolerance} step(s) away in "
            "the same window, one to one; recall = matched real / real events (row = the real event's step), "
            "precision = matched dreamed / dreamed events (row = the dreamed event's step); nan = no events. "
            "Life-loss events are not scored: the simulator predicts no life loss.",
            "",
            self.table.to_markdown(),
        ])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (NaN becomes ``None``); ``markdown`` holds :meth:`to_markdown`."""
        return {
            "horizon": self.horizon,
            "num_clips": self.num_clips,
            "tolerance": self.tolerance,
            "match_sign": self.match_sign,
            "table": _table_dict(self.table),
            "overall": {kind: {k: _json_value(v) for k, v in self.overall(kind).items()}
                        for kind in ("reward", "terminated")},
            "markdown": self.to_markdown(),
        }


def _reward_events(
    pred: np.ndarray, true: np.ndarray, tolerance: int, match_sign: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(real, dreamed, real_matched, dreamed_matched) reward events; with ``match_sign`` per sign, then pooled."""
    if not match_sign:
        real, dreamed = true != 0, pred != 0
        dreamed_matched, real_matched = match_events(dreamed, real, tolerance)
        return real, dreamed, real_matched, dreamed_matched
    parts = []
    for sign in (1.0, -1.0):
        real, dreamed = np.sign(true) == sign, np.sign(pred) == sign
        dreamed_matched, real_matched = match_events(dreamed, real, tolerance)
        parts.append((real, dreamed, real_matched, dreamed_matched))
    (a, b, c, d), (e, f, g, h) = parts
    return a | e, b | f, c | g, d | h


def score_events(
    pred_rewards: ArrayLike,
    true_rewards: ArrayLike,
    pred_terminated: ArrayLike,
    true_terminated: ArrayLike,
    *,
    tolerance: int = EVENT_TOLERANCE,
    match_sign: bool = False,
    title: str | None = None,
) -> EventResult:
    """Event recall / precision per horizon from dreamed and real per-step rewards and termination flags.

    Args:
        pred_rewards, true_rewards: ``(N, T)`` rewards of the dreamed and the real steps ``h = 1..T``.
        pred_terminated, true_terminated: bool ``(N, T)`` termination flags of the same steps.
        tolerance: Steps a dreamed event may be early or late (:func:`match_events`).
        match_sign: Match reward events only with events of the same sign (positive with positive, negative with
            negative); by default any non-zero reward matches any non-zero reward.
        title: Table caption.

    Returns:
        :class:`EventResult`.
    """
    arrays = {name: _as_numpy(value, name) for name, value in (
        ("pred_rewards", pred_rewards), ("true_rewards", true_rewards),
        ("pred_terminated", pred_terminated), ("true_terminated", true_terminated))}  # fmt: skip
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1 or arrays["pred_rewards"].ndim != 2:
        raise ValueError(f"rewards and termination flags must all be (N, T), got {shapes}")
    n, horizon = arrays["pred_rewards"].shape
    pr = arrays["pred_rewards"].astype(np.float64)
    tr = arrays["true_rewards"].astype(np.float64)
    real_term, dreamed_term = arrays["true_terminated"].astype(bool), arrays["pred_terminated"].astype(bool)
    dreamed_term_matched, real_term_matched = match_events(dreamed_term, real_term, tolerance)
    kinds = {
        "reward": _reward_events(pr, tr, tolerance, match_sign),
        "terminated": (real_term, dreamed_term, real_term_matched, dreamed_term_matched),
    }
    columns = ["h"]
    for kind in kinds:
        columns += [f"{kind} recall", f"{kind} precision", f"{kind} real", f"{kind} dreamed"]
    rows: list[dict[str, Any]] = []
    for h in [*range(horizon), None]:
        cols = slice(None) if h is None else slice(h, h + 1)
        row: dict[str, Any] = {"h": "all" if h is None else h + 1}
        for kind, (real, dreamed, real_matched, dreamed_matched) in kinds.items():
            n_real, n_dreamed = int(real[:, cols].sum()), int(dreamed[:, cols].sum())
            row[f"{kind} recall"] = _ratio_or_nan(int(real_matched[:, cols].sum()), n_real)
            row[f"{kind} precision"] = _ratio_or_nan(int(dreamed_matched[:, cols].sum()), n_dreamed)
            row[f"{kind} real"] = n_real
            row[f"{kind} dreamed"] = n_dreamed
        rows.append(row)
    out_arrays: dict[str, np.ndarray] = {}
    for kind, (real, dreamed, real_matched, dreamed_matched) in kinds.items():
        out_arrays.update({f"{kind}_real": real, f"{kind}_dreamed": dreamed, f"{kind}_real_matched": real_matched,
                           f"{kind}_dreamed_matched": dreamed_matched})  # fmt: skip
    if title is None:
        title = f"Reward / termination events over the open-loop rollout (h = 1..{horizon}, ±{tolerance} step)"
    return EventResult(table=HeldOutTable(columns=columns, rows=rows, title=title), horizon=horizon, num_clips=n,
                       tolerance=int(tolerance), match_sign=bool(match_sign), arrays=out_arrays)  # fmt: skip


def evaluate_events(
    sim: Simulator,
    clips: Mapping[str, Any],
    *,
    horizon: int = ACCEPTANCE_HORIZON,
    generator: torch.Generator | None,
    tolerance: int = EVENT_TOLERANCE,
    match_sign: bool = False,
    batch_size: int | None = None,
    steps: int | None = None,
) -> EventResult:
    """Open-loop rollouts of real held-out windows under the real future actions, scored as events.

    The windows are those of :func:`~dws_gym.evaluation.sample_eval_clips` (their logged ``rewards`` /
    ``terminated`` are the real events); windows crossing an episode end are dropped as in
    :func:`~dws_gym.evaluation.evaluate_held_out`. The simulator dreams ``horizon`` steps from the ``K`` real context
    frames (:func:`open_loop_rollout`, predicted terminations do not stop it) and :func:`score_events` matches its
    rewards and terminations with the real ones. :func:`~dws_gym.evaluation.evaluate_held_out` with ``events=True``
    gives the same table from its own rollout without dreaming twice.

    Raises:
        ValueError: clips without ``rewards`` / ``terminated``, no full window, or malformed clips.
    """
    horizon = _check_positive_int("horizon", horizon)
    data = _check_clips(sim, clips, horizon)
    if "rewards" not in data:
        raise ValueError("clips carry no 'rewards' / 'terminated'; events need the logged rewards (sample_eval_clips)")
    full = data["mask"].all(axis=1)
    if not full.any():
        raise ValueError("no window lies fully inside its episode; draw windows with sample_eval_clips")
    k = sim.context_frames
    frames, actions = data["frames"][full], data["actions"][full]
    rollout = open_loop_rollout(sim, frames[:, :k], actions[:, : k - 1], actions[:, k - 1 :], generator=generator,
                                batch_size=batch_size, steps=steps)  # fmt: skip
    return score_events(rollout["rewards"], data["rewards"][full][:, k - 1 :], rollout["terminated"],
                        data["terminated"][full][:, k - 1 :], tolerance=tolerance, match_sign=match_sign)  # fmt: skip
