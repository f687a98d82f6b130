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
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from torch.utils.tensorboard import SummaryWriter

from dws_gym.agents import ActorCritic, PolicyConfig, save_policy
from dws_gym.envs.real import parse_env_id
from dws_gym.offline import OfflineReplay, cql_loss, double_dqn_target
from dws_gym.policy_eval import evaluate_on_levels
from dws_gym.training import global_rng_states, load_checkpoint, restore_global_rng_states, save_checkpoint


@dataclass
class TrainConfig:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "dws-gym"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = True
    """save the Q-network (save_policy format) at every checkpoint and at the end"""

    # Data
    dataset: str = "data/coinrun"
    """the real trajectory store"""
    synthetic_dataset: str | None = None
    """a store of synthesized transitions (offline/augment.py), mixed into every minibatch"""
    synthetic_fraction: float | None = None
    """share of each minibatch from the synthetic store (default: uniform over both stores)"""
    env_id: str | None = None
    """the real env for evaluation (default: the dataset's)"""
    frame_stack: int | None = None
    """frames per observation (default: 1 Procgen, 4 ALE)"""

    # Algorithm
    total_steps: int = 100_000
    """gradient steps (fixed, whatever the data size)"""
    batch_size: int = 256
    """transitions per gradient step"""
    learning_rate: float = 5e-4
    """Adam learning rate"""
    gamma: float = 0.99
    """discount factor"""
    alpha: float = 4.0
    """weight of the conservative term"""
    tau: float = 0.005
    """Polyak rate of the target network"""
    max_grad_norm: float = 10.0
    """gradient clipping"""
    arch: Literal["impala", "nature"] = "impala"
    """Q-network trunk"""

    # Evaluation, checkpoints
    eval_every: int = 10_000
    """evaluate on the real env every this many gradient steps (and at the end)"""
    eval_episodes: int = 10
    """episodes per level range and evaluation (0: none)"""
    eval_max_steps: int = 27_000
    """an evaluation episode is cut after this many steps"""
    log_every: int = 100
    """write losses every this many steps"""
    checkpoint_minutes: float = 5.0
    """write a checkpoint at most this many minutes apart"""
    output_dir: str | None = None
    """run folder: TensorBoard events, policy, checkpoint, results.json (default: runs/{run_name})"""
    resume: bool = False
    """continue the run in --output-dir from its checkpoint"""


RESUME_FIELDS = ("env_id", "dataset", "synthetic_dataset", "synthetic_fraction", "frame_stack", "arch", "batch_size")
"""TrainConfig fields a resumed run must keep (they shape the networks or the data)."""


class CQL:
    """Discrete CQL with a double-DQN target; ``train(batch)`` takes one gradient step and returns its logs."""

    def __init__(self, q: ActorCritic, config: TrainConfig, procgen: bool) -> None:
        self.q, self.q_target = q, copy.deepcopy(q).requires_grad_(False)
        self.optimizer = torch.optim.Adam(q.parameters(), lr=config.learning_rate)
        self.config, self.procgen = config, procgen

    def train(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        reward = batch["reward"] if self.procgen else torch.sign(batch["reward"])
        with torch.no_grad():
            next_online, _ = self.q(batch["next_obs"])
            next_target, _ = self.q_target(batch["next_obs"])
        target = double_dqn_target(next_online, next_target, reward, batch["done"], cfg.gamma)
        q_values, _ = self.q(batch["obs"])
        loss, logs = cql_loss(q_values, batch["action"], target, cfg.alpha)
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
    replay_probe = OfflineReplay(config.dataset)  # the dataset's game decides the defaults
    env_id = config.env_id or replay_probe.info.env_id
    procgen = parse_env_id(env_id)[0] == "procgen"
    if config.frame_stack is None:
        config.frame_stack = 1 if procgen else 4
    config.env_id = env_id
    run_name = f"{env_id}__{config.exp_name}__{config.seed}__{int(time.time())}"
    out_dir = Path(config.output_dir or f"runs/{run_name}")
    ckpt = None
    if config.resume:
        if config.output_dir is None:
            raise SystemExit("--resume continues the run in --output-dir: pass that folder.")
        ckpt = load_checkpoint(out_dir / "checkpoint")
        changed = {k: (ckpt["config"][k], getattr(config, k)) for k in RESUME_FIELDS
                   if ckpt["config"][k] != getattr(config, k)}
        if changed:
            raise SystemExit(f"--resume: the run in {out_dir} used other settings {changed} (saved, given); pass "
                             "the saved ones.")
        run_name = ckpt["run_name"]
    if config.track:
        import wandb

        wandb.init(project=config.wandb_project_name, entity=config.wandb_entity, sync_tensorboard=True,
                   config=vars(config), name=run_name, save_code=True, resume="allow", id=run_name.replace("/", "_"))
    writer = SummaryWriter(str(out_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % (
        "\n".join([f"|{key}|{value}|" for key, value in vars(config).items()])))

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.backends.cudnn.deterministic = config.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and config.cuda else "cpu")
    rng = np.random.default_rng(config.seed)

    replay = OfflineReplay(config.dataset, config.synthetic_dataset, synthetic_fraction=config.synthetic_fraction,
                           frame_stack=config.frame_stack)
    info = replay.info
    obs_shape = (config.frame_stack, *info.obs_shape) if config.frame_stack > 1 else info.obs_shape
    q = ActorCritic(PolicyConfig(arch=config.arch, obs_shape=obs_shape, num_actions=info.num_actions, env_id=env_id,
                                 action_meanings=info.action_meanings,
                                 extra={"algorithm": "cql", "logits": "q_values"})).to(device)
    algo = CQL(q, config, procgen)
    print(f"data: {len(replay.real)} real transitions ({config.dataset})"
          + (f" + {len(replay.synthetic)} synthetic ({config.synthetic_dataset}), {replay.synthetic_fraction:.2f} of "
             "each minibatch" if replay.synthetic is not None else ""), flush=True)

    step = 0
    if ckpt is not None:
        algo.load_state_dict(ckpt["algo"])
        step = int(ckpt["step"])
        restore_global_rng_states(ckpt["rng"])
        rng.bit_generator.state = ckpt["replay_rng"]
        print(f"resumed {out_dir} at step {step}", flush=True)

    def checkpoint() -> None:
        if config.save_model:
            save_policy(q, out_dir / "policy", extra={"algorithm": "cql", "logits": "q_values", "step": step,
                                                      "run_name": run_name})
        save_checkpoint(out_dir / "checkpoint", {"config": asdict(config), "run_name": run_name, "step": step,
                                                 "algo": algo.state_dict(), "rng": global_rng_states(),
                                                 "replay_rng": rng.bit_generator.state})

    def evaluate() -> dict:
        q.eval()
        result = evaluate_on_levels(q, env_id, config.eval_episodes, frame_stack=config.frame_stack,
                                    seed=config.seed + 100_000, max_steps=config.eval_max_steps, deterministic=True)
        q.train()
        for name, r in result.items():
            writer.add_scalar(f"eval/{name}_return", r["return"], step)
            writer.add_scalar(f"eval/{name}_length", r["length"], step)
        print(f"step={step} " + " ".join(f"eval/{k}_return={v['return']:.2f}" for k, v in result.items()), flush=True)
        return result

    start_time, start_step, last_ckpt = time.time(), step, time.time()
    result: dict = {}
    while step < config.total_steps:
        batch = OfflineReplay.to_torch(replay.sample(config.batch_size, rng), device)
        logs = algo.train(batch)
        step += 1
        if step % config.log_every == 0 or step == config.total_steps:
            for k, v in logs.items():
                writer.add_scalar(f"losses/{k}", v, step)
            sps = (step - start_step) / (time.time() - start_time)
            writer.add_scalar("charts/SPS", sps, step)
            print(f"step={step} loss={logs['loss']:.4f} td={logs['td_loss']:.4f} cql={logs['cql_term']:.4f} "
                  f"q={logs['q_data']:.3f} SPS={sps:.1f}", flush=True)
        if config.eval_episodes > 0 and (step % config.eval_every == 0 or step == config.total_steps):
            result = evaluate()
        if time.time() - last_ckpt >= 60 * config.checkpoint_minutes:
            checkpoint()
            last_ckpt = time.time()

    checkpoint()
    if not result and config.eval_episodes > 0:
        result = evaluate()
    (out_dir / "results.json").write_text(json.dumps({
        "algorithm": "cql", "env_id": env_id, "seed": config.seed, "steps": step, "dataset": config.dataset,
        "synthetic_dataset": config.synthetic_dataset, "synthetic_fraction": replay.synthetic_fraction,
        "real_transitions": len(replay.real),
        "synthetic_transitions": 0 if replay.synthetic is None else len(replay.synthetic),
        "eval": result, "config": asdict(config)}, indent=2) + "\n")
    print(f"finished at step {step}; policy, checkpoint and results.json in {out_dir}", flush=True)
    writer.close()
