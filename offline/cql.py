"""Discrete CQL on image observations, from a real dataset optionally doubled with synthesized transitions.

Conservative Q-Learning (Kumar et al., 2020) as the Procgen offline-RL benchmark runs it (Mediratta et al., 2023,
facebookresearch/gen_dgrl): a double-DQN Huber TD loss plus ``alpha * mean(logsumexp_a Q(s, .) - Q(s, a_data))``,
an IMPALA-CNN Q-network, alpha 4, lr 5e-4, batch 256. Target network: Polyak averaging with ``tau`` every step.

Data: ``--dataset`` is a real trajectory store (``python -m dws_gym.collect``), ``--synthetic-dataset`` a store
written by ``offline/augment.py``. Minibatches are drawn from the memory-mapped stores (``next_obs`` by index), the
synthetic share set by ``--synthetic-fraction`` (default: uniform over the union). ``--total-steps`` gradient steps
are taken whatever the data size, so extra data never means extra updates. ALE rewards enter the loss as their sign
(as in CleanRL's DQN), Procgen rewards raw; the last step of a Procgen episode (its final frame is lost) is terminal.

Evaluation on the real env every ``--eval-every`` steps and at the end: Procgen on training levels 0-199 and on
unseen levels >= 250 (``eval/train_return``, ``eval/test_return``), ALE on the game (``eval/real_return``); greedy
actions. The Q-network is saved as a :class:`~dws_gym.agents.ActorCritic` whose logits are the Q-values
(``extra["logits"] = "q_values"``), so ``load_policy`` and the collector read it and its greedy action is argmax Q.
``{output_dir}/results.json`` holds the final evaluation; ``--resume --output-dir D`` continues an interrupted run.

    python offline/cql.py --dataset data/coinrun --env-id procgen/coinrun
    python offline/cql.py --dataset data/coinrun --synthetic-dataset data/coinrun-synthetic
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import tyro

from dws_gym.agents import ActorCritic
from dws_gym.offline import cql_loss, double_dqn_target
from dws_gym.offline.runner import OfflineConfig, OfflineRun, start_run, train


@dataclass
class TrainConfig(OfflineConfig):
    """Discrete CQL on a real trajectory store, optionally mixed with synthesized transitions (offline/cql.py)."""

    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    batch_size: int = 256
    """transitions per gradient step"""
    learning_rate: float = 5e-4
    """Adam learning rate"""
    alpha: float = 4.0
    """weight of the conservative term"""


class CQL:
    """Discrete CQL with a double-DQN target; ``train(batch)`` takes one gradient step and returns its logs."""

    def __init__(self, q: ActorCritic, config: TrainConfig, run: OfflineRun) -> None:
        self.q, self.q_target = q, copy.deepcopy(q).requires_grad_(False)
        self.optimizer = torch.optim.Adam(q.parameters(), lr=config.learning_rate)
        self.config, self.run = config, run

    def train(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        with self.run.autocast():  # bf16 forward passes where the hardware has it; the losses read float32
            with torch.no_grad():
                next_online, _ = self.q(batch["next_obs"])
                next_target, _ = self.q_target(batch["next_obs"])
            q_values, _ = self.q(batch["obs"])  # the network's logits are the Q-values
        target = double_dqn_target(next_online.float(), next_target.float(), self.run.reward(batch), batch["done"],
                                   cfg.gamma)
        loss, logs = cql_loss(q_values.float(), batch["action"], target, cfg.alpha)
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.q.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            for p, tp in zip(self.q.parameters(), self.q_target.parameters()):
                tp.lerp_(p, cfg.tau)
        return {"loss": loss.item(), "grad_norm": grad_norm.item(), **{k: v.item() for k, v in logs.items()}}

    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])


if __name__ == "__main__":
    config = tyro.cli(TrainConfig)
    run = start_run(config, "cql")
    q = run.network(logits="q_values")
    train(run, CQL(q, config, run), q, deterministic_eval=True, policy_extra={"logits": "q_values"},
          print_keys=("loss", "td_loss", "cql_term", "q_data"))
