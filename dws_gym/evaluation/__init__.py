"""Held-out evaluation of a simulator: open-loop rollouts next to the copy-last-frame baseline.

The table this package produces answers three questions about a world simulator, on windows of real episodes the
simulator never trained on:

1. **Fidelity.** Starting from ``K`` real context frames, the simulator dreams ``T`` steps open loop under the
   *logged* actions (its own frames are fed back, never the real ones). Each dreamed frame ``x̂_{t+h}`` is scored
   against the real ``x_{t+h}`` with PSNR, SSIM and full-frame MSE for ``h = 1..T``.
2. **Motion.** The moving-region MSE restricts the error to the pixels where the *real* frame changed,
   ``max_c |x_{t+h} - x_{t+h-1}| > 0.05`` (:func:`dws_gym.metrics.moving_region_mse`); on mostly static games it is
   the number that says whether the ball and paddle move at all.
3. **Action sensitivity.** The same rollouts with each clip given another clip's future actions (shuffled across
   clips, never within time, :func:`dws_gym.metrics.shuffle_actions_across_clips`). A simulator that follows
   actions is closer to the real frames with the true actions than with shuffled ones.

Every metric is reported next to the **copy-last-frame baseline** (the last context frame repeated for every
``h``) on exactly the same frames: a fresh residual flow model predicts that baseline exactly, so beating it is the
first sign of learning, and a model that merely blurs or erases moving objects can beat it on one metric alone,
which is why the three are read together (:func:`check_acceptance`).

Reward / termination: the head's predictions are scored against the logged reward sign and game-over flag twice:
on the simulator's own *one-step* transitions (real context, logged action, the simulator's next frame; every step
of every window) and over the open-loop rollout (dreamed context).

Typical use::

    train_ids, held_out = split_episodes(store, held_out_fraction=0.1)   # from dws_gym.data
    clips = sample_eval_clips(store, held_out, context=sim.context_frames, horizon=15, n=256,
                              rng=np.random.default_rng(0))
    result = evaluate_held_out(sim, clips, horizon=15, generator=torch.Generator().manual_seed(0), shuffle_rng=0)
    print(result.to_markdown())
    sim.config.metrics = result.to_dict()       # the model card renders result.to_dict()["table_markdown"]

Events: good frame metrics do not mean the game's events happen. :func:`evaluate_events` (or
``evaluate_held_out(..., events=True)``) matches the rollout's non-zero rewards and terminations with the real ones
within ±1 step (:func:`match_events`) and reports recall and precision per horizon. :func:`closed_loop_returns`
plays the same action sequences in the real env and the dream from the same real start and compares the returns
(mean ± std, per-episode correlation). :func:`check_event_acceptance` turns both into named booleans::

    result.events = evaluate_events(sim, clips, horizon=15, generator=torch.Generator().manual_seed(0))
    result.closed_loop = closed_loop_returns(sim, "ALE/Breakout-v5", episodes=100, steps=100, seed=0)
    check_event_acceptance(result.events, result.closed_loop)   # {"reward_recall": ..., ..., "all": ...}

Everything runs through the simulator's step protocol (``init_state`` / ``step``; docs/ARCHITECTURE.md, 'Step
protocol'), so any backbone is evaluated the same way.

Modules, each importing only the ones above it:

* ``open_loop``: :func:`open_loop_rollout` and the input checks the others share;
* ``acceptance``: the held-out, event and closed-loop acceptance criteria and their thresholds;
* ``events``: event matching and scoring (:func:`match_events`, :func:`score_events`, :func:`evaluate_events`);
* ``closed_loop``: real env and dream in lockstep (:func:`lockstep_rollout`, :func:`closed_loop_returns`);
* ``held_out``: frame metrics, :class:`EvalResult`, :func:`evaluate_held_out` and the held-out windows;
* ``__main__``: the command line, ``python -m dws_gym.evaluation`` (console script ``dws-evaluate``).
"""

from dws_gym.data import split_episodes
from dws_gym.evaluation.acceptance import (
    ACCEPTANCE_HORIZON,
    MIN_RETURN_CORRELATION,
    MIN_REWARD_PRECISION,
    MIN_REWARD_RECALL,
    RETURN_TOLERANCE,
    SENSITIVITY_HORIZON,
    SENSITIVITY_MARGIN,
    acceptance_summary,
    check_acceptance,
    check_event_acceptance,
    event_acceptance_summary,
)
from dws_gym.evaluation.closed_loop import (
    ClosedLoopResult,
    check_action_meanings,
    closed_loop_returns,
    first_end_step,
    lockstep_rollout,
    pearson,
    returns_until_end,
)
from dws_gym.evaluation.events import (
    EVENT_TOLERANCE,
    EventResult,
    evaluate_events,
    match_events,
    score_events,
)
from dws_gym.evaluation.held_out import (
    FRAME_METRICS,
    EvalResult,
    evaluate_held_out,
    frame_metrics,
    held_out_windows,
    sample_eval_clips,
)
from dws_gym.evaluation.open_loop import (
    open_loop_rollout,
)

__all__ = [
    "ACCEPTANCE_HORIZON",
    "SENSITIVITY_HORIZON",
    "SENSITIVITY_MARGIN",
    "FRAME_METRICS",
    "EVENT_TOLERANCE",
    "MIN_REWARD_RECALL",
    "MIN_REWARD_PRECISION",
    "RETURN_TOLERANCE",
    "MIN_RETURN_CORRELATION",
    "ClosedLoopResult",
    "EvalResult",
    "EventResult",
    "acceptance_summary",
    "check_acceptance",
    "check_action_meanings",
    "check_event_acceptance",
    "closed_loop_returns",
    "event_acceptance_summary",
    "evaluate_events",
    "evaluate_held_out",
    "first_end_step",
    "frame_metrics",
    "held_out_windows",
    "lockstep_rollout",
    "match_events",
    "open_loop_rollout",
    "pearson",
    "returns_until_end",
    "sample_eval_clips",
    "score_events",
    "split_episodes",
]
