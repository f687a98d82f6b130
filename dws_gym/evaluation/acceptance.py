"""Acceptance criteria: when a simulator's held-out table, events and closed-loop returns count as usable.

:func:`check_acceptance` reads the held-out table of :func:`dws_gym.evaluation.evaluate_held_out` (fidelity against
the copy-last-frame baseline, action sensitivity against shuffled actions); :func:`check_event_acceptance` reads an
:class:`~dws_gym.evaluation.EventResult` and / or a :class:`~dws_gym.evaluation.ClosedLoopResult`. Both return named
booleans plus ``all``; the ``*_summary`` functions give the same verdicts as markdown lines. The thresholds are the
module constants below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dws_gym.evaluation.open_loop import _check_positive_int
from dws_gym.metrics import HeldOutTable

if TYPE_CHECKING:
    from dws_gym.evaluation.closed_loop import ClosedLoopResult
    from dws_gym.evaluation.events import EventResult

__all__ = [
    "ACCEPTANCE_HORIZON",
    "SENSITIVITY_HORIZON",
    "SENSITIVITY_MARGIN",
    "MIN_REWARD_RECALL",
    "MIN_REWARD_PRECISION",
    "RETURN_TOLERANCE",
    "MIN_RETURN_CORRELATION",
    "acceptance_summary",
    "check_acceptance",
    "check_event_acceptance",
    "event_acceptance_summary",
]

#: Horizons ``1..ACCEPTANCE_HORIZON`` on which PSNR and moving-region MSE must not lose to copying.
ACCEPTANCE_HORIZON: int = 15
#: Horizons ``1..SENSITIVITY_HORIZON`` on which true actions must beat shuffled ones.
SENSITIVITY_HORIZON: int = 5
#: Required relative reduction of moving-region MSE with true actions versus shuffled actions.
SENSITIVITY_MARGIN: float = 0.2
#: Event acceptance: overall reward-event recall and precision of the open-loop rollout must reach these.
MIN_REWARD_RECALL: float = 0.6
MIN_REWARD_PRECISION: float = 0.5
#: Closed-loop acceptance: mean dream return within this fraction of the mean real return ...
RETURN_TOLERANCE: float = 0.3
#: ... and per-episode Pearson correlation of real and dream returns at least this. The closed loop's reference (a
#: real game reset with another seed under the same actions) starts elsewhere, so it measures how much the start
#: decides a return, not the game's own randomness: it is reported as a baseline and does not lower this bar.
MIN_RETURN_CORRELATION: float = 0.5


# ------------------------------------------------------------------------------- held-out acceptance

_REQUIRED_COLUMNS = ("psnr model", "psnr copy", "moving_mse model", "moving_mse copy", "moving_mse shuffled")


def _horizon_rows(table: HeldOutTable) -> dict[int, dict[str, Any]]:
    return {int(row["h"]): row for row in table.rows if isinstance(row.get("h"), (int, np.integer))}


def _covers_acceptance(table: HeldOutTable, max_horizon: int = ACCEPTANCE_HORIZON) -> bool:
    rows = _horizon_rows(table)
    return all(c in table.columns for c in _REQUIRED_COLUMNS) and all(h in rows for h in range(1, max_horizon + 1))


@dataclass(frozen=True)
class _Criterion:
    """One acceptance rule: ``model op scale * reference`` must hold at every horizon in ``values``."""

    rule: str
    reference: str  # "copy" or "shuffled"
    op: str  # ">=", "<" or "<="
    scale: float
    values: list[tuple[int, float, float]]  # (h, model, reference)

    def holds(self, model: float, ref: float) -> bool:
        bound = self.scale * ref
        return {">=": model >= bound, "<": model < bound, "<=": model <= bound}[self.op]  # NaN -> False

    def failing(self) -> list[int]:
        return [h for h, m, r in self.values if not self.holds(m, r)]


def _criteria(
    table: HeldOutTable, max_horizon: int, sensitivity_horizon: int, margin: float
) -> dict[str, _Criterion]:
    if not isinstance(table, HeldOutTable):
        raise ValueError(f"table must be a HeldOutTable (EvalResult.table), got {type(table).__name__}")
    missing = [c for c in _REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"table lacks columns {missing}; pass the table of evaluate_held_out (model, copy and shuffled rollouts)"
        )
    max_horizon = _check_positive_int("max_horizon", max_horizon)
    sensitivity_horizon = _check_positive_int("sensitivity_horizon", sensitivity_horizon)
    if isinstance(margin, bool) or not (isinstance(margin, (int, float)) and 0.0 <= margin < 1.0):
        raise ValueError(f"sensitivity_margin must be a number in [0, 1), got {margin!r}")
    rows = _horizon_rows(table)
    last = max(max_horizon, sensitivity_horizon)
    absent = [h for h in range(1, last + 1) if h not in rows]
    if absent:
        raise ValueError(
            f"table has horizons {sorted(rows)} but acceptance needs h = 1..{last}; evaluate with horizon >= {last} "
            "or lower max_horizon / sensitivity_horizon"
        )

    def values(model: str, ref: str, upto: int) -> list[tuple[int, float, float]]:
        return [(h, float(rows[h][model]), float(rows[h][ref])) for h in range(1, upto + 1)]

    return {
        "psnr_not_below_copy": _Criterion(
            f"full-frame PSNR >= copy-last-frame at h = 1..{max_horizon}",
            "copy", ">=", 1.0, values("psnr model", "psnr copy", max_horizon),
        ),
        "moving_mse_below_copy": _Criterion(
            f"moving-region MSE < copy-last-frame at h = 1..{max_horizon}",
            "copy", "<", 1.0, values("moving_mse model", "moving_mse copy", max_horizon),
        ),
        "action_sensitive": _Criterion(
            f"moving-region MSE with true actions >= {margin:.0%} below shuffled actions at "
            f"h = 1..{sensitivity_horizon}",
            "shuffled", "<=", 1.0 - margin, values("moving_mse model", "moving_mse shuffled", sensitivity_horizon),
        ),
    }  # fmt: skip


def check_acceptance(
    table: HeldOutTable,
    *,
    max_horizon: int = ACCEPTANCE_HORIZON,
    sensitivity_horizon: int = SENSITIVITY_HORIZON,
    sensitivity_margin: float = SENSITIVITY_MARGIN,
) -> dict[str, bool]:
    """The three acceptance criteria of a held-out table (the issue's definition of a usable simulator).

    * ``psnr_not_below_copy``: mean full-frame PSNR of the model ``>=`` the copy-last-frame baseline's at every
      ``h = 1..max_horizon`` (equality passes: a model that copies exactly meets it).
    * ``moving_mse_below_copy``: mean moving-region MSE of the model strictly ``<`` copying's at every
      ``h = 1..max_horizon`` (a copying model ties and fails: it has not learned any motion).
    * ``action_sensitive``: moving-region MSE with the true actions at least ``sensitivity_margin`` (20 %) below
      the shuffled-action rollout's, ``model <= (1 - margin) * shuffled``, at every ``h = 1..sensitivity_horizon``.

    A NaN value (e.g. no real motion at some ``h`` in any window) fails its criterion. ``all`` is True when all
    three hold.

    Args:
        table: :attr:`EvalResult.table` (or any table with the columns ``psnr model``, ``psnr copy``,
            ``moving_mse model``, ``moving_mse copy``, ``moving_mse shuffled`` and integer ``h`` rows).
        max_horizon, sensitivity_horizon, sensitivity_margin: The criteria's horizons and margin.

    Returns:
        ``{"psnr_not_below_copy", "moving_mse_below_copy", "action_sensitive", "all"}`` -> bool.

    Raises:
        ValueError: a table without those columns or without the horizons the criteria look at.
    """
    criteria = _criteria(table, max_horizon, sensitivity_horizon, sensitivity_margin)
    result = {name: not c.failing() for name, c in criteria.items()}
    result["all"] = all(result.values())
    return result


def acceptance_summary(
    table: HeldOutTable,
    *,
    max_horizon: int = ACCEPTANCE_HORIZON,
    sensitivity_horizon: int = SENSITIVITY_HORIZON,
    sensitivity_margin: float = SENSITIVITY_MARGIN,
) -> str:
    """Human-readable verdict of :func:`check_acceptance`: one markdown line per criterion.

    Each line says PASS / FAIL, the rule, the worst horizon (PSNR: the smallest margin over copying in dB;
    moving-region MSE: the largest ratio to the reference) and the horizons where the rule fails.
    """
    criteria = _criteria(table, max_horizon, sensitivity_horizon, sensitivity_margin)
    lines = ["**Acceptance**", ""]
    for name, c in criteria.items():
        failing = c.failing()
        if c.op == ">=":
            h, m, r = min(c.values, key=lambda v: _nan_worst(v[1] - v[2], worst=-math.inf))
            detail = f"smallest margin {m - r:+.3g} dB at h = {h}"
        else:
            h, m, r = max(c.values, key=lambda v: _nan_worst(_ratio(v[1], v[2]), worst=math.inf))
            bound = "< 1" if c.op == "<" else f"<= {c.scale:.2f}"
            detail = f"largest ratio model / {c.reference} {_ratio(m, r):.3f} at h = {h} (needs {bound})"
        fails = f"; fails at h = {', '.join(map(str, failing))}" if failing else ""
        lines.append(f"- {'FAIL' if failing else 'PASS'} `{name}`: {c.rule}; {detail}{fails}")
    overall = all(not c.failing() for c in criteria.values())
    lines.append(f"- overall: {'PASS' if overall else 'FAIL'}")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 and not (math.isnan(a) or math.isnan(b)) else math.nan


def _nan_worst(value: float, worst: float) -> float:
    """Sort key that ranks NaN as the worst value."""
    return worst if math.isnan(value) else value


# ---------------------------------------------------------------------------------- event acceptance


def _event_criteria(
    events: EventResult | None,
    closed_loop: ClosedLoopResult | None,
    min_reward_recall: float,
    min_reward_precision: float,
    return_tolerance: float,
    min_correlation: float,
) -> dict[str, tuple[bool, str]]:
    if events is None and closed_loop is None:
        raise ValueError("pass events (EventResult) and / or closed_loop (ClosedLoopResult)")
    out: dict[str, tuple[bool, str]] = {}
    if events is not None:
        reward = events.overall("reward")
        recall, precision = float(reward["recall"]), float(reward["precision"])
        out["reward_recall"] = (recall >= min_reward_recall,  # NaN (no real events) fails
                                f"reward-event recall {recall:.3f} >= {min_reward_recall:g} "
                                f"({reward['real']} real events, ±{events.tolerance} step)")  # fmt: skip
        out["reward_precision"] = (precision >= min_reward_precision,
                                   f"reward-event precision {precision:.3f} >= {min_reward_precision:g} "
                                   f"({reward['dreamed']} dreamed events)")  # fmt: skip
    if closed_loop is not None:
        s = closed_loop.summary()
        real_mean, dream_mean = s["real_mean"], s["dream_mean"]
        ok = abs(dream_mean - real_mean) <= return_tolerance * abs(real_mean)
        out["closed_loop_return"] = (bool(ok), f"mean dream return {dream_mean:.3g} within ±{return_tolerance:.0%} "
                                               f"of mean real return {real_mean:.3g}")  # fmt: skip
        corr = closed_loop.correlation
        note = f"; {closed_loop.correlation_note}" if closed_loop.correlation_note else ""
        ref = closed_loop.reference_correlation
        baseline = "" if math.isnan(ref) else f" (a real game from another start under the same actions: {ref:.3f})"
        out["closed_loop_correlation"] = (corr >= min_correlation, f"per-episode return correlation {corr:.3f} >= "
                                                                   f"{min_correlation:g}{baseline}{note}")
    return out


def check_event_acceptance(
    events: EventResult | None = None,
    closed_loop: ClosedLoopResult | None = None,
    *,
    min_reward_recall: float = MIN_REWARD_RECALL,
    min_reward_precision: float = MIN_REWARD_PRECISION,
    return_tolerance: float = RETURN_TOLERANCE,
    min_correlation: float = MIN_RETURN_CORRELATION,
) -> dict[str, bool]:
    """Event and closed-loop acceptance criteria, as named booleans (like :func:`check_acceptance`).

    * ``reward_recall``: overall reward-event recall ``>= min_reward_recall`` (0.6);
    * ``reward_precision``: overall reward-event precision ``>= min_reward_precision`` (0.5);
    * ``closed_loop_return``: ``|mean dream return - mean real return| <= return_tolerance * |mean real return|``
      (±30 %; with a real mean of 0 only a dream mean of 0 passes);
    * ``closed_loop_correlation``: per-episode Pearson correlation ``>= min_correlation`` (0.5); the result's
      real-vs-real reference, a game from another start, is named in the message as a baseline only.

    NaN (no events, undefined correlation) fails. Only the criteria of the results passed are returned, plus
    ``all``.
    """
    criteria = _event_criteria(events, closed_loop, min_reward_recall, min_reward_precision, return_tolerance,
                               min_correlation)  # fmt: skip
    result = {name: bool(ok) for name, (ok, _) in criteria.items()}
    result["all"] = all(result.values())
    return result


def event_acceptance_summary(
    events: EventResult | None = None,
    closed_loop: ClosedLoopResult | None = None,
    **kwargs: Any,
) -> str:
    """Markdown verdict of :func:`check_event_acceptance`: one PASS / FAIL line per criterion."""
    criteria = _event_criteria(
        events, closed_loop,
        kwargs.pop("min_reward_recall", MIN_REWARD_RECALL), kwargs.pop("min_reward_precision", MIN_REWARD_PRECISION),
        kwargs.pop("return_tolerance", RETURN_TOLERANCE), kwargs.pop("min_correlation", MIN_RETURN_CORRELATION),
    )  # fmt: skip
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    lines = ["**Event acceptance**", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'} `{name}`: {text}" for name, (ok, text) in criteria.items()]
    lines.append(f"- overall: {'PASS' if all(ok for ok, _ in criteria.values()) else 'FAIL'}")
    return "\n".join(lines)
