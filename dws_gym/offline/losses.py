"""Loss functions of discrete offline RL: CQL's conservative TD loss and IQL's three losses.

Each function takes plain tensors, so the scripts in ``offline/`` read as the algorithm's outline and the arithmetic
is tested on hand-computed examples. Conventions: ``q`` is ``(B, A)`` Q-values, ``actions`` ``(B,)`` int64,
``reward`` / ``done`` ``(B,)`` float (``done`` is 1 where the transition ends the episode: no bootstrap).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["awr_policy_loss", "cql_loss", "double_dqn_target", "expectile_loss", "iql_q_target"]


def double_dqn_target(q_next_online: torch.Tensor, q_next_target: torch.Tensor, reward: torch.Tensor,
                      done: torch.Tensor, gamma: float) -> torch.Tensor:
    """``r + gamma (1 - done) Q_target(s', argmax_a Q_online(s', a))`` (van Hasselt et al. 2016), no gradient."""
    with torch.no_grad():
        best = q_next_online.argmax(dim=1, keepdim=True)
        return reward + gamma * (1.0 - done) * q_next_target.gather(1, best).squeeze(1)


def cql_loss(q: torch.Tensor, actions: torch.Tensor, target: torch.Tensor, alpha: float
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discrete CQL (Kumar et al. 2020, CQL(H)): Huber TD error plus ``alpha * mean(logsumexp_a Q(s, a) - Q(s, a_data))``.

    The conservative term pushes down the Q-values of every action (through the log-sum-exp) and pushes up the one the
    data took, so actions the dataset never shows cannot look better than they are.

    Returns:
        ``(loss, logs)``; ``logs`` holds ``td_loss``, ``cql_term`` (the bracket, before ``alpha``) and ``q_data``.
    """
    q_data = q.gather(1, actions.long().unsqueeze(1)).squeeze(1)
    td = F.smooth_l1_loss(q_data, target)
    gap = (torch.logsumexp(q, dim=1) - q_data).mean()
    return td + alpha * gap, {"td_loss": td.detach(), "cql_term": gap.detach(), "q_data": q_data.mean().detach()}


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's value loss: ``mean(|expectile - 1(diff < 0)| * diff^2)`` with ``diff = Q(s, a) - V(s)``.

    With ``expectile > 0.5`` an under-estimate (``diff > 0``) costs more than an over-estimate, so ``V`` tends to an
    upper expectile of the data's Q-values: an in-sample approximation of ``max_a Q`` (Kostrikov et al. 2022).
    """
    if not 0.0 < expectile < 1.0:
        raise ValueError(f"expectile must lie in (0, 1), got {expectile}")
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def iql_q_target(reward: torch.Tensor, done: torch.Tensor, v_next: torch.Tensor, gamma: float) -> torch.Tensor:
    """IQL's Q target ``r + gamma (1 - done) V(s')``, no gradient (no max over actions: nothing out of the data)."""
    with torch.no_grad():
        return reward + gamma * (1.0 - done) * v_next


def awr_policy_loss(log_prob: torch.Tensor, advantage: torch.Tensor, temperature: float,
                    max_weight: float = 100.0) -> torch.Tensor:
    """Advantage-weighted behaviour cloning: ``-mean(min(exp(temperature * A), max_weight) * log pi(a_data | s))``.

    ``advantage = Q_target(s, a) - V(s)`` carries no gradient; the cap keeps a few large advantages from dominating.
    """
    weight = torch.exp(temperature * advantage.detach()).clamp(max=max_weight)
    return -(weight * log_prob).mean()
