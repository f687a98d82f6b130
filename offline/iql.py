"""Discrete IQL on image observations, from a real dataset optionally doubled with synthesized transitions.

Implicit Q-Learning (Kostrikov et al., 2022) as the Procgen offline-RL benchmark runs it (Mediratta et al., 2023,
facebookresearch/gen_dgrl), never querying an action outside the data: ``V`` regresses to the ``expectile`` of the
twin target Q-values of the data's actions (expectile 0.8), both Q-networks to ``r + gamma (1 - done) V(s')``, and
the policy clones the data's actions weighted by ``min(exp(temperature * (Q_target - V)), 100)`` (temperature 3);
IMPALA-CNN networks, lr 3e-4, batch 512. Target Q-networks: Polyak averaging with ``tau`` every step.

Data: ``--dataset`` is a real trajectory store (``python -m dws_gym.collect``), ``--synthetic-dataset`` a store
written by ``offline/augment.py``. Minibatches are drawn from the memory-mapped stores (``next_obs`` by index), the
synthetic share set by ``--synthetic-fraction`` (default: uniform over the union). ``--total-steps`` gradient steps
are taken whatever the data size, so extra data never means extra updates. ALE rewards enter the loss as their sign,
Procgen rewards raw; the last step of a Procgen episode (its final frame is lost) is terminal.

Evaluation on the real env every ``--eval-every`` steps and at the end: Procgen on training levels 0-199 and on
unseen levels >= 250 (``eval/train_return``, ``eval/test_return``), ALE on the game (``eval/real_return``); actions
sampled from the policy. The policy is saved with ``save_policy`` (``load_policy``, the collector and
``offline/augment.py --policy`` read it); ``{output_dir}/results.json`` holds the final evaluation;
``--resume --output-dir D`` continues an interrupted run.

    python offline/iql.py --dataset data/coinrun --env-id procgen/coinrun
    python offline/iql.py --dataset data/coinrun --synthetic-dataset data/coinrun-synthetic
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import tyro

from dws_gym.offline import awr_policy_loss, expectile_loss, iql_q_target
from dws_gym.offline.runner import OfflineConfig, OfflineRun, start_run, train


@dataclass
class TrainConfig(OfflineConfig):
    """Discrete IQL on a real trajectory store, optionally mixed with synthesized transitions (offline/iql.py)."""

    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    batch_size: int = 512
    """transitions per gradient step"""
    learning_rate: float = 3e-4
    """Adam learning rate (Q, V and policy)"""
    expectile: float = 0.8
    """expectile of V's regression onto the target Q-values"""
    temperature: float = 3.0
    """inverse temperature of the advantage weights"""
    max_weight: float = 100.0
    """cap of the advantage weights"""


class IQL:
    """Discrete IQL; ``train(batch)`` takes one gradient step of V, both Qs and the policy and returns the logs.

    Networks are :class:`~dws_gym.agents.ActorCritic` s: the Q-networks read their logits as Q-values, V its critic
    head, the policy its logits; so the policy is saved and loaded like any other.
    """

    def __init__(self, config: TrainConfig, run: OfflineRun) -> None:
        self.q1, self.q2 = run.network(role="q"), run.network(role="q")
        self.v, self.actor = run.network(role="v"), run.network(role="policy")
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        lr = config.learning_rate
        self.q_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=lr)
        self.v_optimizer = torch.optim.Adam(self.v.parameters(), lr=lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.config, self.run = config, run

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        optimizer.zero_grad()
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm).item()
        optimizer.step()
        return norm

    def train(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        obs, action = batch["obs"], batch["action"].long().unsqueeze(1)
        reward = self.run.reward(batch)
        fwd = self.run.autocast  # bf16 forward passes where the hardware has it; the losses read float32
        with torch.no_grad(), fwd():
            q_target = torch.minimum(self.q1_target(obs)[0], self.q2_target(obs)[0]).gather(1, action).squeeze(1)
            v_next = self.v.get_value(batch["next_obs"]).squeeze(1)
        q_target, v_next = q_target.float(), v_next.float()
        # V: expectile regression onto the (data action's) target Q
        with fwd():
            v = self.v.get_value(obs).squeeze(1)
        v = v.float()
        advantage = q_target - v
        v_loss = expectile_loss(advantage, cfg.expectile)
        self._step(v_loss, self.v_optimizer)
        # Q: one-step TD onto V(s'), no max over actions
        target = iql_q_target(reward, batch["done"], v_next, cfg.gamma)
        with fwd():
            q1 = self.q1(obs)[0].gather(1, action).squeeze(1)
            q2 = self.q2(obs)[0].gather(1, action).squeeze(1)
        q_loss = 0.5 * ((q1.float() - target).pow(2).mean() + (q2.float() - target).pow(2).mean())
        self._step(q_loss, self.q_optimizer)
        # policy: advantage-weighted behaviour cloning
        with fwd():
            logits, _ = self.actor(obs)
        log_prob = torch.log_softmax(logits.float(), dim=1).gather(1, action).squeeze(1)
        actor_loss = awr_policy_loss(log_prob, advantage.detach(), cfg.temperature, cfg.max_weight)
        self._step(actor_loss, self.actor_optimizer)
        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, tp in zip(net.parameters(), tgt.parameters()):
                    tp.lerp_(p, cfg.tau)
        return {"loss": (v_loss + q_loss + actor_loss).item(), "v_loss": v_loss.item(), "q_loss": q_loss.item(),
                "actor_loss": actor_loss.item(), "v": v.mean().item(), "advantage": advantage.mean().item()}

    def state_dict(self) -> dict:
        nets = ("q1", "q2", "v", "actor", "q1_target", "q2_target", "q_optimizer", "v_optimizer", "actor_optimizer")
        return {name: getattr(self, name).state_dict() for name in nets}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name).load_state_dict(value)


if __name__ == "__main__":
    config = tyro.cli(TrainConfig)
    run = start_run(config, "iql")
    algo = IQL(config, run)
    train(run, algo, algo.actor, deterministic_eval=False, print_keys=("v_loss", "q_loss", "actor_loss", "v"))
